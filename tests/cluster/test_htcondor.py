"""knunu.cluster against a real HTCondor pool: workers through condor_submit, a condor_rm'ed
job, TLS, and the tiny processing stage on pool workers equal to a run in this process."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from distributed import Client

from knunu.cluster import BACKENDS, get_client
from knunu.cluster.backends import _queued

from .helpers import (
    assert_on_loopback,
    assert_same_histograms,
    cancel_every_job,
    cluster_jobs,
    fast_loss,
    jobs_left,
    kill_after,
    process,
    share,
)

pytestmark = [pytest.mark.htcondor, pytest.mark.slow]


#: Jobs removed under a running client: once (CI of stop 47) distributed left the TLS socket of a
#: removed job's worker unclosed, and the garbage collector's ResourceWarning came through
#: pytest as an unraisable exception. The socket is distributed's, not knunu's; what these
#: tests check (jobs submitted again, histograms unchanged) is unaffected.
_DROPPED_TLS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)


def _settings(pool) -> dict:
    return {
        "interface": "lo",
        "shared_temp_directory": str(pool / "shared"),  # where the job user reads the TLS files
        "log_directory": str(pool / "joblogs"),
        "maximum_jobs": 0,  # a fixed number of jobs (minimum_jobs), not adaptive
    }


def _jobs() -> list[str]:
    out = subprocess.run(
        ["condor_q", "-af", "ClusterId", "ProcId", "-constraint", "JobStatus == 2"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [".".join(line.split()) for line in out.stdout.splitlines() if line.strip()]


def test_workers_come_from_condor_submit(htcondor):
    with get_client("htcondor", minimum_jobs=2, **_settings(htcondor)) as client:
        client.wait_for_workers(2, timeout=120)
        assert len(_jobs()) == 2
        # the command knunu asks HTCondor with lists the job ids as dask-jobqueue keeps them
        listed = asyncio.run(_queued(BACKENDS["htcondor"].queue))
        assert listed is not None
        assert set(cluster_jobs(client)) <= listed
        assert len(cluster_jobs(client)) == 2
        assert_on_loopback(client, "tls")
        # a client without our certificate is refused
        with pytest.raises((OSError, TimeoutError)):
            Client(client.scheduler.address.replace("tls://", "tcp://"), timeout=5)
    assert jobs_left(_jobs) == []  # closing the client removes the jobs


def test_processing_on_htcondor_equals_a_local_run(
    htcondor, shared_inputs, production, cfg, trained, local_histograms, tmp_path
):
    share(tmp_path)  # the overlap file is written here and read by the pool's workers
    with get_client("htcondor", minimum_jobs=2, **_settings(htcondor)) as client:
        client.wait_for_workers(2, timeout=120)
        out = process(production, cfg, trained, tmp_path, client)
    assert_same_histograms(out, local_histograms)


@_DROPPED_TLS
def test_condor_rm_mid_processing_changes_no_histogram(
    htcondor, shared_inputs, production, cfg, trained, local_histograms, tmp_path
):
    share(tmp_path)
    progress = kill_after(3, _jobs, ["condor_rm"])
    with get_client("htcondor", minimum_jobs=2, **_settings(htcondor)) as client:
        client.wait_for_workers(2, timeout=120)
        out = process(production, cfg, trained, tmp_path, client, progress)
    assert progress.killed
    assert_same_histograms(out, local_histograms)


@_DROPPED_TLS
def test_adaptive_scaling_submits_jobs_again_when_every_job_ended(
    htcondor, shared_inputs, production, cfg, trained, local_histograms, tmp_path
):
    """Every job removed mid-processing (``condor_rm``): knunu submits them again."""
    share(tmp_path)
    adaptive = {**_settings(htcondor), "minimum_jobs": 2, "maximum_jobs": 2, "queue_query_s": 1}
    with fast_loss(), get_client("htcondor", **adaptive) as client:
        client.wait_for_workers(2, timeout=120)
        progress = cancel_every_job(3, client, ["condor_rm"])
        out = process(production, cfg, trained, tmp_path, client, progress)
        assert len(progress.cancelled) == 2
        assert not set(progress.cancelled) & set(cluster_jobs(client))  # new jobs
    assert_same_histograms(out, local_histograms)
