"""The distribution installs one import package, knunu; generic folder names never leak."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

AREAS = ("simulation", "processors", "mva", "cluster", "fits", "reinterpret", "configs")
REPO = Path(__file__).resolve().parents[2]


def _importable(name: str, cwd: Path) -> bool:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import {name}"], cwd=cwd, capture_output=True, check=False
    )
    return proc.returncode == 0


@pytest.mark.parametrize("area", AREAS)
def test_installed_environment_has_only_knunu(area, tmp_path):
    # -I: isolated mode, so neither the cwd nor PYTHONPATH can hide a leaked top-level package.
    assert _importable(f"knunu.{area}", tmp_path)
    assert not _importable(area, tmp_path)


@pytest.mark.slow
def test_built_wheel_holds_only_the_knunu_package(tmp_path):
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is not None:
        cmd = [uv, "build", "--wheel", "--out-dir", str(tmp_path), str(REPO)]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(REPO)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("knunu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"knunu"}
    for area in AREAS:
        assert f"knunu/{area}/__init__.py" in names
    for data in (
        "knunu/configs/analysis.yaml",
        "knunu/schemas/analysis.schema.json",
        "knunu/data/belle2_knunu_2023_combined.json",
        "knunu/data/number_density_ita_regA.csv",
    ):
        assert data in names


def test_cli_help_lists_every_stage(run_cli):
    proc = run_cli("--help")
    assert proc.returncode == 0
    for stage in ("simulate", "process", "train", "fit", "run", "reinterpret", "cluster"):
        assert stage in proc.stdout


def test_make_help_lists_the_targets():
    make = shutil.which("make")
    assert make is not None
    proc = subprocess.run(
        [make, "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for target in (
        "setup",
        "analysis",
        "simulate",
        "process",
        "fit",
        "reinterpret",
        "test",
        "lint",
        "bench",
        "clean",
    ):
        assert f"  {target} " in proc.stdout
