"""Helpers of the cluster tests: where a cluster listens, batch jobs going away, and the tiny
processing stage on a cluster compared with a run in this process."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.config
import numpy as np
import uproot

from knunu.processors import run as runner
from knunu.processors.stage import make_histograms


def assert_on_loopback(client, protocol: str) -> None:
    """Scheduler, workers and dashboard of ``client``'s cluster listen on 127.0.0.1 only."""
    info = client.scheduler_info()
    assert info["address"].startswith(f"{protocol}://127.0.0.1:")
    assert all(w.startswith(f"{protocol}://127.0.0.1:") for w in info["workers"])
    assert client.dashboard_link.startswith("http://127.0.0.1:")


def jobs_left(jobs: Callable[[], list[str]], timeout: float = 60.0) -> list[str]:
    """The batch jobs still there after waiting up to ``timeout`` seconds for none."""
    deadline = time.time() + timeout
    while jobs() and time.time() < deadline:
        time.sleep(0.5)
    return jobs()


def process(production, cfg, trained, out_dir: Path, client=None, progress=None) -> Path:
    """HTA then ITA (overlap removed, chunks of 1000) into ``out_dir/histograms.root``."""
    out = out_dir / "histograms.root"
    options = runner.RunOptions(progress=progress)
    ita, hta = ({**cfg[a], "chunksize": 1000} for a in ("ita", "hta"))
    make_histograms(production, ita, trained[0] / "models", out, client, hta, options)
    return out


def assert_same_histograms(a: Path, b: Path) -> None:
    """Every histogram of two files bit-identical (values and variances, flow included)."""
    with uproot.open(a) as fa, uproot.open(b) as fb:
        keys = sorted(fa.keys(cycle=False))
        assert keys == sorted(fb.keys(cycle=False))
        assert len(keys) > 100
        for key in keys:
            ha, hb = fa[key], fb[key]
            np.testing.assert_array_equal(ha.values(flow=True), hb.values(flow=True), key)
            np.testing.assert_array_equal(ha.variances(flow=True), hb.variances(flow=True), key)


def kill_after(chunks: int, jobs: Callable[[], list[str]], cancel: list[str]) -> Callable:
    """A progress callback that cancels the first batch job once ``chunks`` chunks are done."""
    killed: list[str] = []

    def progress(p: Any) -> None:
        if p.label.startswith("ITAProcessor") and p.chunks_done == chunks and not killed:
            victim = jobs()[0]
            subprocess.run([*cancel, victim], check=True)
            killed.append(victim)

    progress.killed = killed  # type: ignore[attr-defined]
    return progress


def slurm_jobs() -> list[str]:
    """The SLURM job ids of this user."""
    out = subprocess.run(
        ["squeue", "--me", "-h", "-o", "%i"], capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def cluster_jobs(client: Any) -> list[str]:
    """The batch job ids of the client's own cluster (not other tests' jobs still ending)."""
    return [j.job_id for j in list(client.cluster.workers.values()) if j.job_id]


def fast_loss() -> dask.config.set:
    """The cluster drops a job 2 s after its worker left (15 s by default)."""
    return dask.config.set({"distributed.deploy.lost-worker-timeout": "2s"})


def cancel_every_job(chunks: int, client: Any, cancel: list[str]) -> Callable:
    """A progress callback that ends every job of ``client``'s cluster (``cancel``: scancel,
    condor_rm) once ``chunks`` ITA chunks are done, as a walltime would."""
    cancelled: list[str] = []

    def progress(p: Any) -> None:
        if p.label.startswith("ITAProcessor") and p.chunks_done == chunks and not cancelled:
            cancelled.extend(cluster_jobs(client))
            subprocess.run([*cancel, *cancelled], check=True, capture_output=True)

    progress.cancelled = cancelled  # type: ignore[attr-defined]
    return progress


def share(*paths: Path) -> None:
    """Let another local user (the HTCondor job user) read ``paths`` (pytest makes them 0700)."""
    for path in paths:
        path = Path(path).resolve()
        for parent in [path, *path.parents]:
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o005)
        for root, dirs, files in os.walk(path):
            for name, bits in [(d, 0o005) for d in dirs] + [(f, 0o004) for f in files]:
                p = os.path.join(root, name)
                os.chmod(p, os.stat(p).st_mode | bits)
