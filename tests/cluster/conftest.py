"""Real batch schedulers for the cluster tests, brought up by knunu's own scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from .helpers import process, share

SCRIPTS = Path(str(resources.files("knunu.cluster").joinpath("scripts")))


def _daemons(name: str, env: dict[str, str], state: Path):
    """Start the scheduler with its script unless it runs; stop it afterwards if we started it."""
    script = str(SCRIPTS / f"{name}.sh")
    env = {**os.environ, **env}
    was_running = subprocess.run(["bash", script, "status"], env=env, check=False).returncode == 0
    subprocess.run(["bash", script, "up"], env=env, check=True, timeout=900)
    yield state
    if not was_running:
        subprocess.run(["bash", script, "down"], env=env, check=True, timeout=120)


@pytest.fixture(scope="session")
def slurm():
    """A single-node SLURM on loopback (SLURM_CONF set while it runs)."""
    state = Path(os.environ.get("KNUNU_SLURM_DIR", "/tmp/knunu-slurm"))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    yield from _daemons("slurm", {}, state)
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def htcondor():
    """A personal HTCondor pool on loopback (its tool wrappers first on PATH while it runs).

    Jobs run this interpreter (bound into the pool's chroot) as an unprivileged user.
    """
    state = Path(os.environ.get("KNUNU_CONDOR_DIR", "/tmp/knunu-condor"))
    previous = os.environ["PATH"]
    os.environ["PATH"] = f"{state / 'bin'}:{previous}"
    yield from _daemons("htcondor", {"KNUNU_PYTHON": sys.executable}, state)
    os.environ["PATH"] = previous


@pytest.fixture(scope="session")
def local_histograms(production, cfg, trained, tmp_path_factory):
    """The tiny processing stage run in this process: the reference of the batch runs."""
    return process(production, cfg, trained, tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="session")
def shared_inputs(production, trained):
    """Inputs and models readable by the HTCondor job user."""
    share(production.path.parent, trained[0])
