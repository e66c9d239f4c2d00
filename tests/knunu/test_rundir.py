from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from knunu.cli import main
from knunu.config import load_config
from knunu.errors import DiskFullError, RunLockedError
from knunu.fits.workspace import published_workspace_path
from knunu.rundir import LOCK, RunDir, atomic_path, run_lock, sha256, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"

    def interrupted_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_disk_full_error_naming_the_file_and_leaves_nothing(full_disk):
    target = full_disk / "run" / "big.json"
    target.parent.mkdir()
    with pytest.raises(DiskFullError, match="disk full") as err:
        write_json(target, {"x": "y" * (1 << 20)})
    assert str(target) in str(err.value)
    assert "\n" not in str(err.value)
    assert list(target.parent.iterdir()) == []  # no partial or temporary file


@pytest.mark.parametrize("free_kb", [0, 16])
def test_a_full_disk_under_the_cli_is_one_line_and_exit_2(full_disk, run_cli, free_kb):
    # 0: the lock's record cannot be written; 16 kB: the lock can, the fit's outputs cannot
    filler = full_disk / "filler"
    os.truncate(filler, filler.stat().st_size - free_kb * 1024)
    run = full_disk / "run"
    run.mkdir()
    proc = run_cli("fit", "--workspace", str(published_workspace_path()), "-o", str(run))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "disk full" in proc.stderr
    assert str(run) in proc.stderr  # names the run directory or the file it was writing
    assert not [p for p in run.rglob("*") if p.name.endswith(".part")]  # no partial file


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


def _hold_lock(run_dir) -> subprocess.Popen:
    """Another process holding the run directory's lock until killed."""
    code = (
        "import sys, time\n"
        "from knunu.rundir import run_lock\n"
        "with run_lock(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_a_run_directory_stops_with_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        locked = pytest.raises(RunLockedError, match=rf"^{run}: in use by knunu pid {holder.pid} ")
        with locked, run_lock(run):
            pass
        # the CLI: one line, exit 2, before any work (the fit would write into run/fit)
        ws = str(published_workspace_path())
        assert main(["fit", "--workspace", ws, "-o", str(run), "--toys", "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith(f"knunu: error: {run}: in use by knunu pid {holder.pid}")
        assert not (run / "fit").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, nothing stale is left
        holder.wait()
        holder.stdout.close()
    with run_lock(run):
        assert f"pid {os.getpid()}" in (run / LOCK).read_text()
    assert (run / LOCK).read_text() == ""
