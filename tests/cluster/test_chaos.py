"""Chaos: `knunu run` with workers SIGKILLed at seeded random moments and the whole run killed
mid-simulation, then started again, ends with the outputs of an undisturbed run: on a local
cluster, and on SLURM (adaptive jobs), where whole jobs are also cancelled at random moments."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pyhf
import pytest
import uproot
import yaml

from .helpers import slurm_jobs

KNUNU = shutil.which("knunu", path=str(Path(sys.executable).parent)) or "knunu"
pytestmark = [pytest.mark.slow, pytest.mark.alone]
logger = logging.getLogger(__name__)

#: Branches compared file by file (event and candidate level, weights, truth).
COMPARED = ("__event__", "__weight__", "nTracks", "E_miss", "mcEinv", "K_q2rec", "K_hso02")
MODELS = ("bdt1.json", "bdt2.json", "bdtc.json", "eta.json", "bdth.json", "eta_h.json")


def _config(tmp_path: Path) -> Path:
    """The tiny scale, with the test suite's small trainings and a small workspace to fit."""
    model = pyhf.simplemodels.uncorrelated_background([3.0, 6.0], [40.0, 20.0], [4.0, 3.0])
    workspace = tmp_path / "small.json"
    workspace.write_text(
        json.dumps(
            {
                "channels": model.spec["channels"],
                "observations": [{"name": "singlechannel", "data": [46.0, 27.0]}],
                "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
                "version": "1.0.0",
            }
        )
    )
    rounds = {"rounds": 60}
    doc = {
        "scale": "tiny",
        "ita": {
            "folds": 2,
            "bdtc_bdt1_min": 0.0,
            "bdtc_eta_min": 0.0,
            "chunksize": 5000,
            # 2 folds leave none to learn the rounds on: fixed rounds (as tests/conftest.py)
            "xgboost": {
                "bdt1": rounds,
                "bdt2": rounds,
                "bdtc": {**rounds, "early_stopping_rounds": None},
            },
        },
        "hta": {
            "folds": 2,
            "chunksize": 5000,
            "continuum_min_data": 1,
            "xgboost": {"bdth": rounds, "continuum": {"early_stopping_rounds": None}},
        },
        "fit": {"workspace": str(workspace), "gof_toys": 10},
        "validation": {"injection_toys": 5},
        # as configs/tiny.yaml: the measurement's statistics are tested in test_measurement.py
        "measurement": {"injection_toys": 5, "gof_toys": 20, "factorise": {"replicas": 20}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(
    config: Path, run_dir: Path, log: Path, cluster: str = "local", env: dict | None = None
) -> subprocess.Popen:
    """`knunu run` in the background, its output appended to ``log`` (read by :func:`_tail`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | (env or {})
    # a worker is killed every 2-6 s: on a loaded machine a slow task (the first on a new
    # worker loads the decay libraries) outlives dask's default 3 retries ("4 workers died",
    # CI of stop 47); what is tested is that lost work is redone without changing an output
    env.setdefault("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "20")
    with log.open("a") as out:
        return subprocess.Popen(
            [KNUNU, "run", "-c", str(config), "--cluster", cluster, "-o", str(run_dir)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the whole run can be killed at once
        )


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a run's whole process group (client, scheduler, workers), if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _tail(log: Path, lines: int = 80) -> str:
    """The end of a run's log, for a failure's message (a whole log is cut by pytest)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _spawned_workers(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The Dask worker processes among ``processes`` (spawned by a nanny; not the tracker)."""
    out = []
    for proc in processes:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(proc)
    return out


def _local_workers(pid: int) -> list[psutil.Process]:
    """The workers of a `knunu run` on a LocalCluster: its own spawned children."""
    try:
        return _spawned_workers(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _slurm_workers(_pid: int) -> list[psutil.Process]:
    """The workers of the SLURM jobs (started by slurmd, not by the run): a nanny's children."""
    nannies = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if "distributed.cli.dask_worker" in " ".join(proc.cmdline()):
                nannies.append(proc)
    children = []
    for nanny in nannies:
        with contextlib.suppress(psutil.Error):
            children += nanny.children()
    return _spawned_workers(children)


class _Chaos(threading.Thread):
    """SIGKILLs one worker of the running `knunu run` every 2-6 s (seeded).

    With ``jobs`` (a batch cluster's job ids), every third time it cancels a whole job
    instead (``scancel``, as a walltime or a lost node would end it). A schedule, not a coin:
    with one chance in four a 90 s run cancelled 2 jobs where the test wants 3 (CI of stop 48).
    """

    def __init__(
        self,
        seed: int,
        workers: Callable[[int], list[psutil.Process]],
        jobs: Callable[[], list[str]] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.jobs = jobs
        self.rng = np.random.default_rng(seed)
        self.pid: int | None = None
        self.kills = 0
        self.cancels = 0
        self.actions = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(2.0, 6.0)):
            self.actions += 1 if self.pid else 0
            if self.jobs is not None and self.pid and self.actions % 3 == 0:
                jobs = self.jobs()
                if jobs:
                    victim = jobs[int(self.rng.integers(len(jobs)))]
                    subprocess.run(["scancel", victim], check=False)
                    self.cancels += 1
                continue
            workers = self.workers(self.pid) if self.pid else []
            if workers:
                victim = workers[int(self.rng.integers(len(workers)))]
                try:
                    victim.send_signal(signal.SIGKILL)
                    self.kills += 1
                except psutil.Error:
                    pass


def _ntuples(run_dir: Path) -> dict[str, tuple]:
    catalogue = json.loads((run_dir / "ntuples" / "catalogue.json").read_text())["datasets"]
    out = {}
    for name, entry in catalogue.items():
        for f in entry["files"]:
            numbers = tuple(f[k] for k in ("generated", "sum_weights", "entries_ita", "events"))
            with uproot.open(run_dir / "ntuples" / f["path"]) as rf:
                tree = rf["ita"]  # data files have no truth branches
                arrays = tuple(tree[b].array(library="ak").tolist() for b in COMPARED if b in tree)
            out[f"{name}/{f['path']}"] = (numbers, arrays)
    return out


def _histograms(path: Path) -> dict[str, tuple]:
    with uproot.open(path) as rf:
        return {
            key: (rf[key].values(flow=True).tolist(), rf[key].variances(flow=True).tolist())
            for key in rf.keys(cycle=False)
        }


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run directory) of a `knunu run` on the local cluster that nothing disturbed."""
    base = tmp_path_factory.mktemp("chaos")
    config = _config(base)
    reference = base / "reference"
    log = base / "reference.log"
    quiet = _start(config, reference, log)
    assert quiet.wait(timeout=1200) == 0, _tail(log)
    return config, reference


def _chaos_run(
    config: Path, run_dir: Path, cluster: str = "local", env: dict | None = None
) -> None:
    """`knunu run` with workers killed throughout and the whole run killed mid-simulation."""
    batch = cluster != "local"
    chaos = _Chaos(
        seed=20231114,
        workers=_slurm_workers if batch else _local_workers,
        jobs=slurm_jobs if batch else None,
    )
    chaos.start()
    log = run_dir.with_suffix(".log")
    first = _start(config, run_dir, log, cluster, env)
    chaos.pid = first.pid
    # the whole run (client, scheduler, local workers) killed in the middle of the simulation
    records = run_dir / "ntuples"
    deadline = time.monotonic() + 600
    while len(list(records.rglob(".*.root.done.json"))) < 8:
        if first.poll() is not None or time.monotonic() > deadline:
            _kill(first)
            chaos.stop.set()
            pytest.fail(f"the first run ended or stalled before 8 files:\n{_tail(log)}")
        time.sleep(0.2)
    _kill(first)
    if batch:  # the dead client's jobs end, as the workers' death timeout would end them
        subprocess.run(["scancel", "--me"], check=True)
    assert not (records / "catalogue.json").exists()
    finished = {
        p.with_name(p.name[1 : -len(".done.json")]): None for p in records.rglob(".*.done.json")
    }
    finished = {p: p.stat().st_mtime_ns for p in finished if p.exists()}
    # started again on the same run directory, still losing workers
    again = _start(config, run_dir, log, cluster, env)
    chaos.pid = again.pid
    try:
        code = again.wait(timeout=1500)
    except subprocess.TimeoutExpired:
        _kill(again)
        pytest.fail(f"knunu run started again did not end within 1500 s:\n{_tail(log)}")
    finally:
        chaos.stop.set()
    assert code == 0, _tail(log)
    # pytest -o log_cli=true shows it
    logger.info("chaos run: %d workers killed, %d jobs cancelled", chaos.kills, chaos.cancels)
    assert chaos.kills >= 5, f"only {chaos.kills} workers killed"
    assert chaos.cancels >= (3 if batch else 0), f"only {chaos.cancels} jobs cancelled"
    # what had finished before the kill was reused, not made again
    assert {p: p.stat().st_mtime_ns for p in finished} == finished


def _assert_same_outputs(run_dir: Path, reference: Path) -> None:
    assert _ntuples(run_dir) == _ntuples(reference)
    for name in MODELS:
        a = json.loads((reference / "models" / name).read_text())
        b = json.loads((run_dir / "models" / name).read_text())
        assert a == b, name
    assert _histograms(run_dir / "histograms.root") == _histograms(reference / "histograms.root")
    fit_a = json.loads((reference / "fit" / "results.json").read_text())
    fit_b = json.loads((run_dir / "fit" / "results.json").read_text())
    assert fit_a == fit_b


def test_chaos_on_the_local_cluster_changes_no_output(undisturbed, tmp_path):
    config, reference = undisturbed
    _chaos_run(config, tmp_path / "chaos")
    _assert_same_outputs(tmp_path / "chaos", reference)


@pytest.mark.slurm
def test_chaos_on_slurm_changes_no_output(slurm, undisturbed, tmp_path):
    """Adaptive SLURM jobs (2): workers SIGKILLed and whole jobs cancelled; lost jobs are
    submitted again (``keep_workers``) and the outputs equal the local undisturbed run's."""
    config, reference = undisturbed
    env = {
        f"DASK_KNUNU__CLUSTER__SLURM__{key}": value
        for key, value in {
            "INTERFACE": "lo",
            "QUEUE": "debug",
            "WALLTIME": "00:30:00",
            "MINIMUM_JOBS": "2",
            "MAXIMUM_JOBS": "2",
            "QUEUE_QUERY_S": "2",
            "LOG_DIRECTORY": str(tmp_path / "joblogs"),
        }.items()
    }
    # a cancelled job is dropped 2 s after its worker left (15 s by default)
    env["DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT"] = "2s"
    try:
        _chaos_run(config, tmp_path / "chaos", "slurm", env)
    finally:
        subprocess.run(["scancel", "--me"], check=False)
    _assert_same_outputs(tmp_path / "chaos", reference)
