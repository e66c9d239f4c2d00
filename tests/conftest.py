"""Shared fixtures. Each test makes its own tiny data; nothing depends on the repository root
being on sys.path (run with `pytest`, not `python -m pytest`)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knunu.cluster import get_client
from knunu.config import load_config
from knunu.mva.hta import train_hta
from knunu.mva.train import train_ita
from knunu.processors import run as runner
from knunu.processors.stage import make_tables
from knunu.simulation import bdecays
from knunu.simulation.production import (
    LibraryTask,
    build_library_file,
    library_path,
    plan_production,
    run_production,
)

KNUNU = shutil.which("knunu", path=str(Path(sys.executable).parent)) or "knunu"


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MB tmpfs (the run directory on a nearly full disk); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def full_disk(small_disk):
    """:func:`small_disk` filled to the last block by one file, ``filler``."""
    with open(small_disk / "filler", "wb") as fh:
        block = b"\0" * (1 << 20)
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass
    return small_disk


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


# One tiny production and one training for the processor and cluster tests: simulated once on
# a 2-worker LocalCluster; the ITA and HTA training tables and models are made from it.


@pytest.fixture(scope="session")
def cfg():
    config = load_config()
    ita = copy.deepcopy(config["ita"])
    # tiny scale: few off-resonance events, so the BDTc sample takes everything after selection
    ita.update(folds=2, bdtc_bdt1_min=0.0, bdtc_eta_min=0.0, chunksize=5000)
    for name in ("bdt1", "bdt2", "bdtc"):
        ita["xgboost"][name]["rounds"] = 60
    hta = copy.deepcopy(config["hta"])
    hta.update(folds=2, chunksize=5000, continuum_min_data=1)
    hta["xgboost"]["bdth"]["rounds"] = 60
    # 2 folds leave none to learn the rounds on: fixed rounds, as before early stopping (it
    # is tested in tests/mva; xgboost then estimates base_score, about 0.5 here)
    ita["xgboost"]["bdtc"]["early_stopping_rounds"] = None  # null: off, also in a YAML dump
    hta["xgboost"]["continuum"]["early_stopping_rounds"] = None
    return {**config, "scale": "tiny", "ita": ita, "hta": hta}


@pytest.fixture(scope="session")
def production(tmp_path_factory, cfg):
    directory = tmp_path_factory.mktemp("tiny") / "ntuples"
    with get_client("local", n_workers=2) as client:
        path = run_production(plan_production(cfg, directory), client)
    return runner.Catalogue.load(path)


@pytest.fixture(scope="session")
def trained(production, cfg, tmp_path_factory):
    """(folder, ITA table report, ITA summary, HTA table report, HTA summary)."""
    base = tmp_path_factory.mktemp("trained")
    report = make_tables(production, cfg["ita"], base / "tables")
    summary = train_ita(base / "tables", production.datasets, cfg["ita"], base / "models", 7)
    hta_report = make_tables(production, cfg["hta"], base / "tables_hta", analysis="hta")
    hta_summary = train_hta(
        base / "tables_hta", production.datasets, cfg["hta"], base / "models", 7
    )
    return base, report, summary, hta_report, hta_summary
