"""`knunu process` killed in the middle and started again on the same run directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def run_dir(tmp_path, production, trained, cfg):
    """A run directory over the shared tiny production and models, chunks of 500 entries."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "ntuples").symlink_to(production.path.parent)
    (run / "models").symlink_to(trained[0] / "models")
    config = {
        **{k: v for k, v in cfg.items() if not k.startswith("_")},
        "output_dir": str(run),
        "ita": {**cfg["ita"], "chunksize": 500},
        "hta": {**cfg["hta"], "chunksize": 500},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    return run


def _same(a: Path, b: Path) -> None:
    with uproot.open(a) as fa, uproot.open(b) as fb:
        assert sorted(fa.keys(cycle=False)) == sorted(fb.keys(cycle=False))
        for key in fa.keys(cycle=False):
            np.testing.assert_array_equal(fa[key].values(flow=True), fb[key].values(flow=True))
            np.testing.assert_array_equal(
                fa[key].variances(flow=True), fb[key].variances(flow=True)
            )


def test_a_killed_process_run_restarts_from_its_checkpoints(run_dir, run_cli, tmp_path):
    config = str(tmp_path / "tiny.yaml")
    first = run_cli("process", "-c", config, "-o", str(run_dir))
    assert first.returncode == 0, first.stderr
    assert "dashboard: http://127.0.0.1:" in first.stderr
    assert "ITAProcessor (ita): " in first.stderr  # the progress line
    assert "INFO distributed" not in first.stderr  # Dask's start-up chatter only with -v
    assert "0 from checkpoints" in first.stdout
    assert not (run_dir / "checkpoints").exists()  # removed once the histograms exist
    reference = tmp_path / "reference.root"
    shutil.move(run_dir / "histograms.root", reference)

    knunu = shutil.which("knunu", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen(
        [knunu, "process", "-c", config, "-o", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its LocalCluster dies with it
    )
    deadline = time.time() + 300
    while len(list(run_dir.glob("checkpoints/ITAProcessor-*/*.pkl"))) < 5:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "histograms.root").exists()

    again = run_cli("process", "-c", config, "-o", str(run_dir))
    assert again.returncode == 0, again.stderr
    resumed = int(again.stdout.split(" from checkpoints")[0].rsplit("(", 1)[1])
    assert resumed >= 5
    _same(run_dir / "histograms.root", reference)
