"""Real batch schedulers for the cluster tests, brought up by knunu's own scripts."""

from __future__ import annotations

import os
import subprocess
from importlib import resources
from pathlib import Path

import pytest

SCRIPTS = Path(str(resources.files("knunu.cluster").joinpath("scripts")))


@pytest.fixture(scope="session")
def slurm():
    """A single-node SLURM on loopback; stopped afterwards if this session started it."""
    state = Path(os.environ.get("KNUNU_SLURM_DIR", "/tmp/knunu-slurm"))
    script = str(SCRIPTS / "slurm.sh")
    was_running = subprocess.run(["bash", script, "status"], check=False).returncode == 0
    subprocess.run(["bash", script, "up"], check=True, timeout=600)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield state
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if not was_running:
        subprocess.run(["bash", script, "down"], check=True, timeout=120)
