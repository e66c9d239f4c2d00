"""knunu.cluster against a real SLURM: workers through sbatch, a killed job, TLS, and the tiny
processing stage through sbatch workers equal to a run in this process."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest
from distributed import Client
from distributed.security import Security

from knunu.cluster import BACKENDS, get_client
from knunu.cluster.backends import _queued
from knunu.errors import ProcessingError
from knunu.processors import run as runner
from knunu.processors.ita import ITAProcessor

from .helpers import (
    assert_on_loopback,
    assert_same_histograms,
    cancel_every_job,
    cluster_jobs,
    fast_loss,
    jobs_left,
    kill_after,
    process,
    slurm_jobs,
)

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    # a job ended from outside takes its worker's TLS connection with it; distributed leaves
    # that socket to the garbage collector, which warns when it collects it
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
    ),
]

#: A fixed number of jobs (minimum_jobs; maximum_jobs 0: not adaptive).
SETTINGS = {
    "interface": "lo",
    "queue": "debug",
    "walltime": "00:20:00",
    "memory": "2GB",
    "maximum_jobs": 0,
}


def _slow_square_factory():
    # A function defined at run time is pickled by value, so workers need not import this
    # test module (they run in another directory, as on a real cluster).
    def slow_square(x: int) -> int:
        time.sleep(0.2)
        return x * x

    return slow_square


_slow_square = _slow_square_factory()


def test_workers_come_from_sbatch_and_compute(slurm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # job logs must not land in the working directory
    with get_client("slurm", minimum_jobs=2, **SETTINGS) as client:
        client.wait_for_workers(2, timeout=120)
        assert len(slurm_jobs()) == 2
        # the command knunu asks SLURM with lists the job ids as dask-jobqueue keeps them
        listed = asyncio.run(_queued(BACKENDS["slurm"].queue))
        assert listed is not None
        assert set(cluster_jobs(client)) <= listed
        assert len(cluster_jobs(client)) == 2
        assert_on_loopback(client, "tls")
        assert sum(client.gather(client.map(_slow_square, range(20)))) == sum(
            x * x for x in range(20)
        )
    assert jobs_left(slurm_jobs) == []  # closing the client cancels the batch jobs
    assert not list(tmp_path.glob("slurm-*.out"))


def test_scancel_of_a_worker_mid_run_loses_nothing(slurm):
    with get_client("slurm", minimum_jobs=2, **SETTINGS) as client:
        client.wait_for_workers(2, timeout=120)
        futures = client.map(_slow_square, range(60), pure=False)
        time.sleep(1.5)
        victim = slurm_jobs()[0]
        subprocess.run(["scancel", victim], check=True)
        assert client.gather(futures) == [x * x for x in range(60)]


def test_client_without_our_certificate_is_refused(slurm):
    with get_client("slurm", minimum_jobs=1, **SETTINGS) as client:
        client.wait_for_workers(1, timeout=120)
        address = client.scheduler.address
        assert address.startswith("tls://")
        # plain TCP to the TLS listener
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout=5)
        # TLS with a certificate from another CA: the scheduler rejects the handshake
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=Security.temporary(), timeout=5)
        # ... while our own client is connected and works
        assert client.submit(sum, [1, 2]).result() == 3


def test_processing_on_slurm_equals_a_local_run(
    slurm, production, cfg, trained, local_histograms, tmp_path
):
    with get_client("slurm", minimum_jobs=2, **SETTINGS) as client:
        client.wait_for_workers(2, timeout=120)
        out = process(production, cfg, trained, tmp_path, client)
    assert_same_histograms(out, local_histograms)


def test_scancel_mid_processing_changes_no_histogram(
    slurm, production, cfg, trained, local_histograms, tmp_path
):
    progress = kill_after(3, slurm_jobs, ["scancel"])
    with get_client("slurm", minimum_jobs=2, **SETTINGS) as client:
        client.wait_for_workers(2, timeout=120)
        out = process(production, cfg, trained, tmp_path, client, progress)
    assert progress.killed
    assert_same_histograms(out, local_histograms)


@pytest.mark.parametrize("processes", [1, 2])
def test_adaptive_scaling_submits_jobs_again_when_every_job_ended(
    slurm, production, cfg, trained, local_histograms, tmp_path, processes
):
    """Every job cancelled mid-processing (as a walltime would end them): new jobs take over
    and no histogram changes. A job of one worker is dropped by the cluster after the
    lost-worker timeout and replaced (distributed 2026.8); a job of two workers is never dropped
    by the cluster, and adaptive scaling submits none: knunu finds it gone from ``squeue``
    and submits it again (``keep_workers``; without it, no worker comes back)."""
    adaptive = {**SETTINGS, "minimum_jobs": 2, "maximum_jobs": 2, "queue_query_s": 1}
    adaptive |= {"processes": processes, "cores": processes}
    with fast_loss(), get_client("slurm", **adaptive) as client:
        client.wait_for_workers(2 * processes, timeout=120)
        progress = cancel_every_job(3, client, ["scancel"])
        out = process(production, cfg, trained, tmp_path, client, progress)
        assert len(progress.cancelled) == 2
        assert not set(progress.cancelled) & set(cluster_jobs(client))  # new jobs
    assert_same_histograms(out, local_histograms)


def test_adaptive_scaling_replaces_workers_that_reach_their_lifetime(
    slurm, production, cfg, trained, local_histograms, tmp_path
):
    """Workers retire before the walltime (``lifetime``) and their nannies start new ones in
    the same jobs (``--lifetime-restart``); nothing is lost."""
    seen: set[str] = set()
    short = {**SETTINGS, "lifetime": "8s", "lifetime_stagger": "1s", "maximum_jobs": 2}
    with fast_loss(), get_client("slurm", minimum_jobs=1, **short) as client:
        client.wait_for_workers(1, timeout=120)

        def note_workers(p: Any) -> None:
            seen.update(client.scheduler_info(n_workers=-1)["workers"])

        out = process(production, cfg, trained, tmp_path, client, note_workers)
    assert len(seen) > 2  # workers retired and new ones took over
    assert_same_histograms(out, local_histograms)


def test_without_adaptive_scaling_a_run_without_workers_stops_in_one_line(
    slurm, production, cfg, trained, tmp_path
):
    ita = {**cfg["ita"], "chunksize": 1000}
    with fast_loss(), get_client("slurm", minimum_jobs=2, **SETTINGS) as client:
        client.wait_for_workers(2, timeout=120)
        progress = cancel_every_job(3, client, ["scancel"])
        options = runner.RunOptions(
            progress=progress, no_workers_timeout=5.0, checkpoint_dir=tmp_path / "checkpoints"
        )
        with pytest.raises(ProcessingError) as err:
            runner.run(
                production,
                ["signal", "charged"],
                ITAProcessor(str(trained[0] / "models"), ita),
                "ita",
                client,
                1000,
                options,
            )
    assert progress.cancelled
    assert "\n" not in str(err.value)
    assert "no Dask workers for 5 s" in str(err.value)
    assert len(list((tmp_path / "checkpoints").rglob("*.pkl"))) >= 3


def test_a_job_cancelled_while_queued_is_submitted_again(slurm):
    """A job that ends before its worker came (cancelled in the queue, failed at its start) is
    never dropped by the cluster; knunu finds it gone from ``squeue`` and submits it again."""
    cpus = subprocess.run(
        ["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    # another user's job holds every CPU of the node: the cluster's job waits in the queue
    blocker = subprocess.run(
        ["sbatch", "--parsable", "-c", cpus, "-o", "/dev/null", "--wrap", "sleep 600"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        queued = {**SETTINGS, "minimum_jobs": 1, "maximum_jobs": 1, "queue_query_s": 1}
        with get_client("slurm", **queued) as client:
            deadline = time.monotonic() + 60
            while not cluster_jobs(client) and time.monotonic() < deadline:
                time.sleep(0.2)
            ours = cluster_jobs(client)
            assert len(ours) == 1
            assert ours[0] in slurm_jobs()  # waiting in the queue
            subprocess.run(["scancel", *ours], check=True)
            time.sleep(3)  # the cluster still counts the cancelled job
            subprocess.run(["scancel", blocker], check=True)
            client.wait_for_workers(1, timeout=120)
            assert client.submit(sum, [1, 2]).result() == 3
            assert ours[0] not in cluster_jobs(client)
    finally:
        subprocess.run(["scancel", blocker], check=False)
