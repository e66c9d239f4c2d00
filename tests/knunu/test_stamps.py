"""Stage stamps: a stage is up to date exactly when its key and its outputs are unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from knunu import stamps
from knunu.pipeline import STEPS


def _config():
    return {"seed": 1, "ita": {"folds": 4, "chunksize": 1000}, "fit": {"cls_level": 0.9}}


def test_key_follows_config_code_and_inputs():
    cfg = _config()
    key = stamps.stage_key("train", cfg, ("seed", "ita"), ("knunu.mva.train",), {"a": "1"})
    assert key == stamps.stage_key(
        "train", _config(), ("ita", "seed"), ("knunu.mva.train",), {"a": "1"}
    )
    changed = _config()
    changed["ita"]["folds"] = 5
    assert (
        stamps.stage_key("train", changed, ("seed", "ita"), ("knunu.mva.train",), {"a": "1"}) != key
    )
    # histograms do not depend on chunking: the chunk size is not part of the key
    rechunked = _config()
    rechunked["ita"]["chunksize"] = 7
    assert (
        stamps.stage_key("train", rechunked, ("seed", "ita"), ("knunu.mva.train",), {"a": "1"})
        == key
    )
    # a section the stage does not read does not matter
    other = _config()
    other["fit"]["cls_level"] = 0.95
    assert (
        stamps.stage_key("train", other, ("seed", "ita"), ("knunu.mva.train",), {"a": "1"}) == key
    )
    assert stamps.stage_key("train", cfg, ("seed", "ita"), ("knunu.mva.train",), {"a": "2"}) != key
    assert stamps.stage_key("train", cfg, ("seed", "ita"), ("knunu.fits.infer",), {"a": "1"}) != key


def test_code_digest_of_one_file_differs_from_another():
    one = stamps.code_digest(["configs/samples.yaml"])
    assert one != stamps.code_digest(["configs/bdecays.yaml"])
    assert one == stamps.code_digest(["configs/samples.yaml"])
    with pytest.raises(ValueError, match="not knunu modules: mva"):
        stamps.code_digest(["mva"])  # the folder's name is not its module's


def _names(files):
    return {f"{f.parent.name}/{f.name}" for f in files}


def test_a_stage_hashes_every_module_its_code_imports_and_the_tables_they_read():
    train = _names(stamps.code_files(STEPS["train"].code()))
    # mva/train.py draws its plots with mva/plots.py: an edit there re-runs the training
    assert {"mva/train.py", "mva/hta.py", "mva/plots.py", "processors/layouts.py"} <= train
    # the fits sit above the training (tests/knunu/test_layers.py): none of their code counts
    assert not any(f.startswith("fits/") for f in train)
    assert {"knunu/measurement.py", "configs/systematics.yaml"}.isdisjoint(train)
    fit = _names(stamps.code_files(STEPS["fit"].code()))
    assert {"fits/build.py", "fits/catalogue.py", "configs/systematics.yaml"} <= fit
    assert "mva/train.py" not in fit
    simulate = _names(stamps.code_files(STEPS["simulate"].code()))
    assert {"simulation/production.py", "configs/samples.yaml", "configs/bdecays.yaml"} <= simulate
    assert "knunu/catalogue.py" in simulate  # it imports a user's catalogue


def test_editing_a_file_changes_exactly_the_keys_of_the_stages_that_run_it(monkeypatch, cfg):
    keys = {n: stamps.stage_key(n, cfg, s.config_keys, s.code(), {}) for n, s in STEPS.items()}
    runs = {n: _names(stamps.code_files(s.code())) for n, s in STEPS.items()}
    read_bytes = Path.read_bytes

    def edited(path):
        data = read_bytes(path)
        return (
            data + b"\n# edited\n"
            if path.name == "plots.py" and path.parent.name == "fits"
            else data
        )

    monkeypatch.setattr(Path, "read_bytes", edited)
    changed = {
        n
        for n, s in STEPS.items()
        if stamps.stage_key(n, cfg, s.config_keys, s.code(), {}) != keys[n]
    }
    assert changed == {n for n in STEPS if "fits/plots.py" in runs[n]}
    assert "fit" in changed
    assert changed.isdisjoint({"simulate", "train", "process"})


def test_the_modules_a_stage_loads_when_imported_are_all_hashed():
    """Imports the stages' entry modules in a fresh interpreter: whatever knunu module that
    loads (an import the static graph missed would show here) must be in the closure."""
    entries = sorted({e for s in STEPS.values() for e in s.code() if ":" not in e})
    script = (
        "import importlib, sys\n"
        f"for m in {entries!r}: importlib.import_module(m)\n"
        "print('\\n'.join(m for m in sys.modules if m == 'knunu' or m.startswith('knunu.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    # knunu.configs is loaded by importlib.resources to read tables: those count per module
    loaded = {m for m in out if stamps._locate(m) is not None} - {"knunu.configs"}
    assert loaded, "nothing imported"
    assert loaded <= set(stamps.module_closure(entries)), loaded - set(
        stamps.module_closure(entries)
    )


def test_outputs_decide_staleness(tmp_path):
    out = tmp_path / "histograms.root"
    out.write_bytes(b"abc")
    stamp = stamps.write_stamp(tmp_path, "process", "k1", [out])
    assert stamps.load_stamp(tmp_path, "process") == stamp
    assert stamps.why_stale(tmp_path, stamp, "k1") is None
    assert "changed" in stamps.why_stale(tmp_path, stamp, "k2")
    # touched but identical: still up to date (the digest is checked when the stat differs)
    os.utime(out, ns=(1, 1))
    assert stamps.why_stale(tmp_path, stamp, "k1") is None
    # same size and an edit: the new digest differs
    out.write_bytes(b"abd")
    assert stamps.why_stale(tmp_path, stamp, "k1") == "output histograms.root was changed"
    out.unlink()
    assert stamps.why_stale(tmp_path, stamp, "k1") == "output histograms.root is missing"
    stamps.clear_stamp(tmp_path, "process")
    assert stamps.load_stamp(tmp_path, "process") is None


def test_an_unreadable_stamp_means_run_again(tmp_path):
    path = stamps.stamp_path(tmp_path, "fit")
    path.parent.mkdir()
    path.write_text("{not json")
    assert stamps.load_stamp(tmp_path, "fit") is None


def test_every_packaged_data_file_counts_for_the_modules_that_read_it():
    listed = {f for files in stamps.TABLES.values() for f in files}
    for f in listed:
        assert stamps._packaged(f).is_file(), f
    knunu_dir = stamps._locate("knunu").parent
    configs = stamps._locate("knunu.configs").parent
    found = {f"knunu/data/{p.name}" for p in (knunu_dir / "data").iterdir() if p.suffix != ".md"}
    found |= {f"configs/{p.name}" for p in configs.glob("*.yaml")}
    # the run's configuration (hashed by section), cluster settings, example configs
    not_read_by_name = {"configs/analysis.yaml", "configs/cluster.yaml"}
    examples = {"configs/belle2.yaml", "configs/measurement.yaml", "configs/tiny.yaml"}
    assert found - not_read_by_name - examples == listed


def test_keys_do_not_depend_on_where_knunu_is_installed():
    labels = [label for label, _ in stamps._labelled(STEPS["fit"].code())]
    assert labels == sorted(labels)
    assert all(label.startswith(("knunu", "configs/")) for label in labels)
    assert "knunu.stamps.py" not in labels  # the keys' own code changes no output
