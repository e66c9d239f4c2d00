"""Cluster backends: registry, dask-config settings, loopback-only local clusters."""

from __future__ import annotations

import os
import time

import dask.config
import pytest

from knunu.cluster import BACKENDS, cluster_settings, get_client
from knunu.errors import ClusterError

from .helpers import assert_on_loopback


def test_registry_has_the_three_backends():
    assert set(BACKENDS) == {"local", "slurm", "htcondor"}


def test_settings_come_from_dask_config_and_overrides():
    assert cluster_settings("local")["n_workers"] == 2
    with dask.config.set({"knunu.cluster.local.n_workers": 5}):
        assert cluster_settings("local")["n_workers"] == 5
        assert cluster_settings("local", n_workers=1)["n_workers"] == 1


def test_unknown_backend_and_setting_are_errors():
    with pytest.raises(ClusterError, match="unknown cluster backend 'pbs'"):
        cluster_settings("pbs")
    with pytest.raises(ClusterError, match="unknown setting"):
        cluster_settings("local", n_wrokers=3)


def test_a_batch_backend_asking_for_no_jobs_is_an_error():
    # neither a fixed number of jobs nor adaptive scaling: a run would wait for workers forever
    with (
        pytest.raises(ClusterError, match="asks for no batch jobs") as err,
        get_client("slurm", minimum_jobs=0, maximum_jobs=0),
    ):
        pass
    assert "\n" not in str(err.value)
    assert "DASK_KNUNU__CLUSTER__SLURM__MAXIMUM_JOBS" in str(err.value)


def test_batch_backends_scale_adaptively_by_default():
    for backend in ("slurm", "htcondor"):
        settings = cluster_settings(backend)
        assert settings["maximum_jobs"] > 0, backend


@pytest.mark.slow
def test_local_cluster_binds_to_loopback():
    with get_client("local", n_workers=2) as client:
        client.wait_for_workers(2, timeout=120)
        assert_on_loopback(client, "tcp")
        assert client.submit(sum, [1, 2, 3]).result() == 6
        # the workers start with knunu's malloc thresholds, not the nanny's 64 KiB trim
        env = client.run(lambda: {k: v for k, v in os.environ.items() if k.startswith("MALLOC")})
        assert all(
            e == {"MALLOC_TRIM_THRESHOLD_": "134217728", "MALLOC_MMAP_THRESHOLD_": "33554432"}
            for e in env.values()
        )


@pytest.mark.slow
def test_slurm_job_script_has_lifetime_and_tls():
    settings = cluster_settings("slurm", interface="lo", walltime="00:30:00", queue="debug")
    cluster = BACKENDS["slurm"].make(settings)
    try:
        script = cluster.job_script()
        assert "#SBATCH -t 00:30:00" in script
        assert "#SBATCH -p debug" in script
        assert "--lifetime 55m" in script
        assert "--lifetime-stagger 4m" in script
        assert "export MALLOC_MMAP_THRESHOLD_=33554432" in script
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        assert "tls" in script.lower()
    finally:
        cluster.close()
        tls_dir = cluster.knunu_cleanup.peek()[2][0]
        cluster.knunu_cleanup()
    assert not tls_dir.exists()


def _leak_factory():
    # defined at run time: pickled by value, workers need not import this module
    def leak(gib: float) -> int:
        import sys

        import numpy as np

        kept = np.ones(int(gib * 2**30 / 8))
        sys.__dict__.setdefault("_knunu_leak", []).append(kept)  # never freed: unmanaged
        return len(kept)

    def after(x: int) -> int:
        return x + 1

    return leak, after


def test_a_worker_above_the_pause_threshold_keeps_working():
    """Dask pauses a worker at 80 % memory until it falls; unmanaged memory need not fall.

    knunu's workers do not pause (a measurement run stalled with both workers paused): the
    next task runs; a worker growing on to 95 % is restarted by its nanny instead.
    """
    leak, after = _leak_factory()
    with get_client("local", n_workers=1, memory_limit="1GiB") as client:
        client.wait_for_workers(1, timeout=60)
        client.submit(leak, 0.85, pure=False).result(timeout=60)
        time.sleep(1.0)  # the memory monitor has seen it (every 100 ms)
        assert client.submit(after, 1, pure=False).result(timeout=30) == 2
        # a worker its nanny restarts (at 95 % memory, say) does not pause either
        client.restart()
        pause = client.run(lambda dask_worker: dask_worker.memory_manager.memory_pause_fraction)
        assert list(pause.values()) == [False]


@pytest.mark.slow
def test_a_worker_whose_nanny_gave_up_is_started_again():
    """A nanny closes for good when its worker is killed while it starts it; the local
    cluster replaces it (knunu.cluster.backends.keep_workers) and the work goes on."""
    with get_client("local", n_workers=2) as client:
        client.wait_for_workers(2, timeout=120)
        cluster = client.cluster
        name, nanny = next(iter(cluster.workers.items()))
        cluster.sync(nanny.close)  # what "Failed to start process" leaves behind
        assert str(nanny.status) == "Status.closed"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fresh = cluster.workers.get(name)
            if (
                fresh is not None
                and fresh is not nanny
                and len(client.scheduler_info()["workers"]) == 2
            ):
                break
            time.sleep(0.5)
        assert cluster.workers[name] is not nanny, "the closed nanny was not replaced"
        assert str(cluster.workers[name].status) == "Status.running"
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=60) == 6


@pytest.mark.slow
def test_workers_whose_restart_failed_are_started_again():
    """A start that fails (its worker killed while it starts) drops the nanny from the cluster's
    workers: keep_workers tries again until every planned worker runs (the chaos run lost both
    workers this way, stop 43)."""
    with get_client("local", n_workers=2) as client:
        client.wait_for_workers(2, timeout=120)
        cluster = client.cluster
        for nanny in list(cluster.workers.values()):
            cluster.sync(nanny.close)
        cluster.workers.clear()  # what a failed _correct_state leaves behind
        client.wait_for_workers(2, timeout=60)
        # the scheduler knows a new worker a moment before the cluster lists its nanny
        deadline = time.monotonic() + 30
        while len(cluster.workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sorted(cluster.workers) == sorted(cluster.worker_spec)
        assert all(str(w.status) == "Status.running" for w in cluster.workers.values())
        assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=60) == 6


def test_the_no_worker_clock_starts_once_workers_have_come():
    """Batch jobs still queued are waited for; once workers have come and gone, the clock runs."""
    from contextlib import closing

    from knunu.cluster.backends import completed, had_workers

    with get_client("local", n_workers=0) as client:
        assert not had_workers(client)
        futures = [client.submit(sum, [1, 2], pure=False)]
        client.loop.call_later(4.0, client.cluster.scale, 1)  # the first job starts late
        with closing(completed(client, futures, "test", "tasks", 1.0, ClusterError)) as done:
            assert [(k, r) for k, r, _ in done] == [(0, 3)]
        assert had_workers(client)
        client.cluster.scale(0)
        while client.scheduler_info(n_workers=-1)["workers"]:
            time.sleep(0.1)
        futures = [client.submit(sum, [3, 4], pure=False)]
        with (
            pytest.raises(ClusterError, match="test: no Dask workers for 1 s"),
            closing(completed(client, futures, "test", "tasks", 1.0, ClusterError)) as done,
        ):
            list(done)
