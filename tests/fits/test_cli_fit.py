"""`knunu fit` from a histogram file: workspaces, results and plots land in the run directory."""

from __future__ import annotations

import json
import math

import pyhf
import pytest

from knunu.fits.catalogue import load_catalogue
from knunu.fits.report import load_results

from .histfile import write_histogram_file

pytestmark = pytest.mark.slow


def test_fit_from_histograms_returns_injected_mu(tmp_path, run_cli):
    hpath = tmp_path / "histograms.root"
    write_histogram_file(hpath, load_catalogue(), mu=3.0)
    run = tmp_path / "run"
    proc = run_cli("fit", "--histograms", str(hpath), "--toys", "0", "-o", str(run))
    assert proc.returncode == 0, proc.stderr
    for name in ("ita", "hta", "combined"):
        spec = json.loads((run / "workspaces" / f"{name}.json").read_text())
        pyhf.Workspace(spec)  # valid against pyhf's schema
    results = {r.analysis: r for r in load_results(run / "fit" / "results.json")}
    assert set(results) == {"combined", "ita", "hta"}
    for r in results.values():
        assert r.mu == pytest.approx(3.0, abs=1e-4)  # Asimov data at mu = 3
        assert r.minos_down < 0 < r.minos_up
    # the combination is more precise than either analysis alone
    assert results["combined"].mu_hesse < min(results["ita"].mu_hesse, results["hta"].mu_hesse)
    plots = {p.name for p in (run / "fit" / "plots" / "combined").iterdir()}
    assert {"ita_on_sr_prefit.png", "hta_sr_postfit.png", "pulls.png", "correlation.png"} <= plots


def test_fit_without_histograms_is_one_line(tmp_path, run_cli):
    proc = run_cli("fit", "-o", str(tmp_path / "empty"))
    assert proc.returncode == 2
    missing = tmp_path / "empty" / "histograms.root"
    assert proc.stderr.strip() == f"knunu: error: {missing}: file not found"


def test_fit_with_a_missing_histogram_file_is_one_line(tmp_path, run_cli):
    missing = tmp_path / "nope.root"
    proc = run_cli("fit", "--histograms", str(missing))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"knunu: error: {missing}: file not found"


def test_asimov_pulls_are_zero(tmp_path, run_cli):
    hpath = tmp_path / "histograms.root"
    write_histogram_file(hpath, load_catalogue(), mu=1.0)
    proc = run_cli(
        "fit",
        "--histograms",
        str(hpath),
        "--toys",
        "0",
        "--analysis",
        "hta",
        "-o",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    (result,) = load_results(tmp_path / "run" / "fit" / "results.json")
    assert len(result.pulls) > 10
    for name, pull, constraint in result.pulls:
        assert abs(pull) < 1e-4, name
        assert 0 < constraint <= 1.0 + 1e-6, name  # data can only shrink a prior


def test_the_runs_own_pseudo_data_stay_blinded_until_unblinded(tmp_path, run_cli):
    run = tmp_path / "run"
    run.mkdir()
    write_histogram_file(run / "histograms.root", load_catalogue(), mu=3.0)  # the run's own
    args = ("fit", "--toys", "0", "--analysis", "ita", "--impacts", "-o", str(run))
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "BLINDED" in proc.stdout
    (result,) = load_results(run / "fit" / "results.json")
    assert result.blinded
    # mu and all that depends on it: its uncertainties and the impacts (shifts of mu) too
    for value in (result.mu, result.mu_hesse, result.stat, result.z_bkg, result.nll):
        assert math.isnan(value)
    assert result.upper_limit is None
    assert math.isnan(result.branching_fraction)
    assert result.impacts == ()
    assert len(result.pulls) > 10  # the nuisance parameters are shown
    written = (run / "fit" / "results.md").read_text() + proc.stdout + proc.stderr
    assert "3.00" not in written
    assert "nan" not in written.lower()
    plots = {p.name for p in (run / "fit" / "plots" / "ita").iterdir()}
    assert "pulls.png" in plots
    assert not any("fit.png" in p or "impacts" in p for p in plots)  # no data plots, no impacts
    # the unblind step shows what the pseudo-data say
    proc = run_cli(*args, "--unblind")
    assert proc.returncode == 0, proc.stderr
    (result,) = load_results(run / "fit" / "results.json")
    assert not result.blinded
    assert result.mu == pytest.approx(3.0, abs=1e-4)
    assert result.impacts
    assert "3.00" in proc.stdout
    assert (run / "fit" / "plots" / "ita" / "impacts.png").exists()
    # blind again (the config's default): the unblinded fit's data plots do not stay behind
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    plots = {p.name for p in (run / "fit" / "plots" / "ita").iterdir()}
    assert "pulls.png" in plots
    assert not any("fit.png" in p or "impacts" in p for p in plots)


def test_data_from_another_run_are_blinded_too(tmp_path, run_cli):
    """A run directory is known by its manifest: its histograms fitted from elsewhere stay blind."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text("{}")
    write_histogram_file(other / "histograms.root", load_catalogue(), mu=3.0)
    proc = run_cli("fit", "--histograms", str(other / "histograms.root"), "--toys", "0",
                   "--analysis", "hta", "-o", str(tmp_path / "scratch"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (result,) = load_results(tmp_path / "scratch" / "fit" / "results.json")
    assert result.blinded
    assert "3.00" not in proc.stdout
