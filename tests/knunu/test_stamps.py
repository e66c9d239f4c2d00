"""Stage stamps: a stage is up to date exactly when its key and its outputs are unchanged."""

from __future__ import annotations

import os

from knunu import stamps


def _config():
    return {"seed": 1, "ita": {"folds": 4, "chunksize": 1000}, "fit": {"cls_level": 0.9}}


def test_key_follows_config_code_and_inputs():
    cfg = _config()
    key = stamps.stage_key("train", cfg, ("seed", "ita"), ("mva",), {"a": "1"})
    assert key == stamps.stage_key("train", _config(), ("ita", "seed"), ("mva",), {"a": "1"})
    changed = _config()
    changed["ita"]["folds"] = 5
    assert stamps.stage_key("train", changed, ("seed", "ita"), ("mva",), {"a": "1"}) != key
    # histograms do not depend on chunking: the chunk size is not part of the key
    rechunked = _config()
    rechunked["ita"]["chunksize"] = 7
    assert stamps.stage_key("train", rechunked, ("seed", "ita"), ("mva",), {"a": "1"}) == key
    # a section the stage does not read does not matter
    other = _config()
    other["fit"]["cls_level"] = 0.95
    assert stamps.stage_key("train", other, ("seed", "ita"), ("mva",), {"a": "1"}) == key
    assert stamps.stage_key("train", cfg, ("seed", "ita"), ("mva",), {"a": "2"}) != key
    assert stamps.stage_key("train", cfg, ("seed", "ita"), ("fits",), {"a": "1"}) != key


def test_code_digest_of_one_file_differs_from_its_package():
    one = stamps.code_digest(["configs/samples.yaml"])
    assert one != stamps.code_digest(["configs/bdecays.yaml"])
    assert one != stamps.code_digest(["configs"])
    assert one == stamps.code_digest(["configs/samples.yaml"])


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
