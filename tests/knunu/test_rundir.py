from __future__ import annotations

import json
import os

import pytest

from knunu.config import load_config
from knunu.rundir import RunDir, atomic_path, sha256, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"

    def interrupted_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole(tmp_path):
    target = write_json(tmp_path / "a" / "out.json", {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_manifest_records_seed_versions_and_hashes(tmp_path):
    cfg = load_config()
    run = RunDir(tmp_path / "run", cfg)
    inp = tmp_path / "input.txt"
    inp.write_text("data")
    run.record_input(inp)
    out = write_json(run.path / "r.json", {"ok": True})
    run.record_output(out)
    run.record_stage("simulate", "failed", reason="test")
    manifest = json.loads(run.write_manifest().read_text())
    assert manifest["seed"] == cfg["seed"]
    assert manifest["inputs"][str(inp.resolve())] == sha256(inp)
    assert manifest["outputs"]["r.json"] == sha256(out)
    assert manifest["versions"]["pyhf"] == "0.7.6"
    assert manifest["stages"]["simulate"]["status"] == "failed"


def test_atomic_outputs_get_the_umask_mode_not_a_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # colleagues and batch users can read it
