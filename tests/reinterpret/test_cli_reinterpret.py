"""`knunu reinterpret` on the published likelihood and on a run's own (blinded)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pyhf
import pytest

from knunu.fits.catalogue import load_catalogue

_spec = importlib.util.spec_from_file_location(
    "histfile", Path(__file__).parents[1] / "fits" / "histfile.py"
)
histfile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(histfile)
write_histogram_file = histfile.write_histogram_file

pytestmark = pytest.mark.slow


def test_reinterpret_writes_valid_workspaces_results_and_plots(tmp_path, run_cli):
    run = tmp_path / "run"
    # the run's pseudo-data have no signal (mu = 0): blinded fits must not see them
    write_histogram_file(tmp_path / "histograms.root", load_catalogue(), mu=0.0, seed=3)
    proc = run_cli("fit", "--histograms", str(tmp_path / "histograms.root"), "--toys", "0",
                   "-o", str(run))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # a run's measurement: its combined workspace at 362 fb^-1 (here the fit's own)
    (run / "measurement" / "workspaces").mkdir(parents=True)
    shutil.copy(run / "workspaces" / "combined.json", run / "measurement" / "workspaces")
    (run / "measurement" / "summary.json").write_text(
        json.dumps({"luminosity_fb": {"on": 362.0, "off": 42.0}, "blind": True})
    )
    shutil.copy(tmp_path / "histograms.root", run / "histograms.root")
    proc = run_cli("reinterpret", "--grid", "5", "--masses", "3", "-o", str(run))
    assert proc.returncode == 0, proc.stderr
    out = run / "reinterpret"
    for name in ("published", "run"):
        pyhf.Workspace(json.loads((out / name / "workspace_wet.json").read_text()))
        results = json.loads((out / name / "results.json").read_text())
        assert len(results["x"]["masses"]) == 3
        assert {p.name for p in (out / name).glob("*.png")} == {
            "wet_profiles.png", "wet_contours.png", "x_limits.png"
        }  # fmt: skip
    # blinded: the run's own is fitted to Asimov data at expected_mu (4.6), never to its data
    run_results = json.loads((out / "run" / "results.json").read_text())
    assert "blinded" in run_results["data"]
    assert run_results["plain_mu"] == pytest.approx(4.6, abs=1e-3)
    assert run_results["wet"]["mu_equivalent"] == pytest.approx(4.6, rel=0.05)
    assert "expected: Asimov at mu = 4.6" in proc.stdout
    assert "observed, Belle II" in proc.stdout
    assert {p.name for p in (out / "maps").iterdir()} >= {"maps.json", "comparison.png"}
    # the unblind step fits the pseudo-data (no signal in them)
    proc = run_cli("reinterpret", "--likelihood", "run", "--unblind", "--grid", "3",
                   "--masses", "0", "-o", str(run))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    unblinded = json.loads((out / "run" / "results.json").read_text())
    assert "unblinded" in unblinded["data"]
    assert unblinded["plain_mu"] < 2.0


def test_reinterpret_without_a_measurement_is_one_line(tmp_path, run_cli):
    proc = run_cli("reinterpret", "--likelihood", "run", "-o", str(tmp_path / "none"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "missing (run `knunu run` first" in proc.stderr
