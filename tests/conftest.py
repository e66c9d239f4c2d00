"""Shared fixtures. Each test makes its own tiny data; nothing depends on the repository root
being on sys.path (run with `pytest`, not `python -m pytest`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knunu.simulation import bdecays
from knunu.simulation.production import LibraryTask, build_library_file, library_path

KNUNU = shutil.which("knunu", path=str(Path(sys.executable).parent)) or "knunu"


@pytest.fixture
def run_cli(tmp_path):
    """Run the installed `knunu` command in a scratch directory; returns CompletedProcess."""

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        return subprocess.run(
            [KNUNU, *args],
            cwd=cwd or tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def libraries(tmp_path_factory):
    """A directory of small decay libraries (every species and stratum)."""
    directory = tmp_path_factory.mktemp("libraries")
    for k, (species, stratum, n) in enumerate(bdecays.library_jobs(1500, 150)):
        path = str(library_path(directory, species, stratum))
        build_library_file(LibraryTask(species, stratum, n, 100 + k, path))
    return str(directory)
