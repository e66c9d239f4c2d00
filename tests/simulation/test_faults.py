"""Faults during a production: a full disk, a cluster without workers; each resumes."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import uproot

from knunu.cluster import get_client
from knunu.errors import SimulationError
from knunu.processors.run import Catalogue
from knunu.progress import Progress
from knunu.rundir import adler32
from knunu.simulation.production import done_path, plan_production, run_production

#: Branches compared file by file against the undisturbed production.
COMPARED = ("__event__", "__weight__", "nTracks", "E_miss", "K_q2rec", "K_cosTBTO")


def _content(catalogue: Catalogue) -> dict[str, tuple]:
    """Per file (relative path): the catalogue's numbers and some branches of the ITA tree."""
    out = {}
    for name, entry in catalogue.datasets.items():
        for f in entry["files"]:
            path = Path(f["path"])  # absolute once loaded
            numbers = tuple(f[k] for k in ("generated", "sum_weights", "entries_ita", "events"))
            with uproot.open(path) as rf:
                tree = rf["ita"]
                arrays = tuple(tree[b].array(library="ak").tolist() for b in COMPARED)
            out[f"{name}/{Path(f['path']).name}"] = (numbers, arrays)
    return out


def test_a_full_disk_ends_in_one_line_and_the_production_resumes(cfg, production, small_disk):
    plan = plan_production(cfg, small_disk / "ntuples")
    with get_client("local", n_workers=2) as client:
        with pytest.raises(SimulationError, match="disk full") as err:
            run_production(plan, client)
        assert "\n" not in str(err.value)
        assert str(small_disk) in str(err.value)  # the file it was writing
        # nothing half-written looks complete: no temporary file, no catalogue, and every file
        # that is there is whole (written to a temporary name, renamed when complete)
        assert not [p for p in small_disk.rglob("*") if p.name.endswith(".part")]
        assert not (small_disk / "ntuples" / "catalogue.json").exists()
        finished = sorted(small_disk.rglob("*.root"))
        assert finished, "the disk filled before the first file: make it larger"
        for path in finished:
            with uproot.open(path) as rf:
                assert rf["ita"].num_entries >= 0
        before = {p: p.stat().st_mtime_ns for p in finished if done_path(p).exists()}
        assert before
        # space freed: the same production started again reuses what finished and ends whole
        subprocess.run(["mount", "-o", "remount,size=400M", str(small_disk)], check=True)
        path = run_production(plan, client)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    resumed = Catalogue.load(path)
    for entry in resumed.datasets.values():
        for f in entry["files"]:
            assert adler32(f["path"]) == f["adler32"]
    assert _content(resumed) == _content(production)


@pytest.mark.slow
def test_a_cluster_without_workers_stops_the_production_and_it_resumes(cfg, production, tmp_path):
    """Every batch worker gone (walltime), none back: one line, finished files kept (issue 21)."""
    plan = replace(plan_production(cfg, tmp_path / "ntuples"), no_workers_timeout=3.0)
    with get_client("local", n_workers=2) as client:
        client.wait_for_workers(2, timeout=120)

        def end_every_job(progress: Progress) -> None:
            if progress.unit == "files" and progress.chunks_done == 2:
                client.cluster.scale(0)  # as batch jobs reaching their walltime

        with pytest.raises(SimulationError) as err:
            run_production(plan, client, end_every_job)
    message = str(err.value)
    assert "\n" not in message
    assert "simulate: no Dask workers for 3 s" in message
    assert "files to go; finished files are kept" in message
    assert not (tmp_path / "ntuples" / "catalogue.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.root") if done_path(p).exists()}
    assert len([p for p in kept if "libraries" not in str(p)]) >= 2
    # workers back: the production resumes, reuses every finished file and ends identical
    with get_client("local", n_workers=2) as client:
        path = run_production(plan, client)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert _content(Catalogue.load(path)) == _content(production)


def test_a_finished_file_whose_record_meets_a_full_disk_is_kept(full_disk, caplog):
    """The record beside a file is a convenience: a full disk there loses no result."""
    from knunu.simulation.production import LibraryTask, _collect

    path = full_disk / "library.npz"
    path.touch()  # an inode, no block
    task = LibraryTask(species=521, stratum=None, n=1, seed=1, path=str(path))
    results: list = [None]
    assert _collect({"entries": 1}, task, None, results, 0) is None
    assert results == [{"entries": 1}]
    assert not done_path(path).exists()
    assert "no finished-task record" in caplog.text
    assert "disk full" in caplog.text
