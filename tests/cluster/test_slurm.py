"""knunu.cluster against a real SLURM: workers through sbatch, a killed job, TLS, and the tiny
processing stage through sbatch workers equal to a run in this process."""

from __future__ import annotations

import subprocess
import time

import pytest
from distributed import Client
from distributed.security import Security

from knunu.cluster import get_client

from .helpers import assert_on_loopback, assert_same_histograms, jobs_left, kill_after, process

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SETTINGS = {"interface": "lo", "queue": "debug", "walltime": "00:20:00", "memory": "2GB"}


def _jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


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
        assert len(_jobs()) == 2
        assert_on_loopback(client, "tls")
        assert sum(client.gather(client.map(_slow_square, range(20)))) == sum(
            x * x for x in range(20)
        )
    assert jobs_left(_jobs) == []  # closing the client cancels the batch jobs
    assert not list(tmp_path.glob("slurm-*.out"))


def test_scancel_of_a_worker_mid_run_loses_nothing(slurm):
    with get_client("slurm", minimum_jobs=2, **SETTINGS) as client:
        client.wait_for_workers(2, timeout=120)
        futures = client.map(_slow_square, range(60), pure=False)
        time.sleep(1.5)
        victim = _jobs()[0]
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
    progress = kill_after(3, _jobs, ["scancel"])
    with get_client("slurm", minimum_jobs=2, **SETTINGS) as client:
        client.wait_for_workers(2, timeout=120)
        out = process(production, cfg, trained, tmp_path, client, progress)
    assert progress.killed
    assert_same_histograms(out, local_histograms)
