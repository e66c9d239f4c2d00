"""Inference on small models, cross-checked against pyhf's own implementation."""

from __future__ import annotations

import numpy as np
import pyhf
import pytest

from knunu.errors import WorkspaceError
from knunu.fits.infer import (
    Likelihood,
    asimov_data,
    cls,
    deviance,
    goodness_of_fit,
    impacts,
    upper_limit,
)
from knunu.fits.workspace import analyses_in, load_workspace, select


def _workspace(signal=(5.0, 10.0), bkg=(50.0, 60.0), unc=(5.0, 12.0), obs=(62.0, 66.0)):
    model = pyhf.simplemodels.uncorrelated_background(list(signal), list(bkg), list(unc))
    spec = {
        "channels": model.spec["channels"],
        "observations": [{"name": "singlechannel", "data": list(obs)}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    return pyhf.Workspace(spec)


def test_cls_matches_pyhf_hypotest():
    ws = _workspace()
    pyhf.set_backend("numpy")
    model = ws.model()
    data = ws.data(model)
    expected = float(pyhf.infer.hypotest(1.5, data, model, test_stat="qtilde"))
    lh = Likelihood.from_workspace(ws)
    best = lh.fit()
    asimov = lh.with_data(asimov_data(lh, 0.0))
    assert cls(lh, 1.5, best, asimov, asimov.fit()) == pytest.approx(expected, rel=2e-3)


def test_upper_limit_matches_pyhf():
    ws = _workspace()
    pyhf.set_backend("numpy")
    model = ws.model()
    data = ws.data(model)
    obs_limit, _ = pyhf.infer.intervals.upper_limits.upper_limit(
        data, model, scan=np.linspace(0.1, 5, 50), level=0.1
    )
    lh = Likelihood.from_workspace(ws)
    assert upper_limit(lh, lh.fit(), 0.9) == pytest.approx(float(obs_limit), rel=5e-3)


def test_hesse_and_minos_on_a_counting_experiment():
    # One bin, no nuisance: n ~ Poisson(mu s + b). MLE mu = (n - b)/s, Hesse error sqrt(n)/s.
    ws = _workspace(signal=(10.0,), bkg=(50.0,), unc=(1e-6,), obs=(80.0,))
    lh = Likelihood.from_workspace(ws)
    best = lh.fit()
    assert best.x[lh.poi] == pytest.approx(3.0, abs=1e-6)
    assert lh.uncertainties(best).error[lh.poi] == pytest.approx(np.sqrt(80) / 10, rel=1e-4)
    down, up = lh.minos(best)
    assert -down < up  # Poisson: the upper side is longer


def test_sample_has_the_model_mean():
    ws = _workspace()
    lh = Likelihood.from_workspace(ws)
    x = lh.init
    toys = lh.sample(x, 20000, seed=3)
    assert toys.shape == (20000, len(lh.data))
    np.testing.assert_allclose(toys.mean(axis=0), lh.expected_data(x), rtol=0.02)
    np.testing.assert_array_equal(toys, lh.sample(x, 20000, seed=3))


def test_analysis_selection(tmp_path):
    ws = _workspace()
    assert analyses_in(ws) == []
    with pytest.raises(WorkspaceError, match="no HTA channel"):
        select(ws, "hta")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON (line 1"),
        ("[1, 2]", "top level is not an object"),
        ('{"channels": []}', "not a valid pyhf workspace"),
    ],
)
def test_malformed_workspace_is_one_line(tmp_path, run_cli, content, problem):
    f = tmp_path / "ws.json"
    f.write_text(content)
    with pytest.raises(WorkspaceError) as info:
        load_workspace(f)
    assert str(info.value).startswith(f"{f}: ")
    assert problem in str(info.value)
    proc = run_cli("fit", "--workspace", str(f))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"knunu: error: {info.value}"


def test_impacts_are_real_refits():
    ws = _workspace(
        signal=(5.0, 10.0, 8.0),
        bkg=(50.0, 60.0, 40.0),
        unc=(5.0, 12.0, 2.0),
        obs=(62.0, 66.0, 55.0),
    )
    lh = Likelihood.from_workspace(ws)
    best = lh.fit()
    unc = lh.uncertainties(best)
    ranked = impacts(lh, best, unc)
    assert [i.size for i in ranked] == sorted((i.size for i in ranked), reverse=True)
    assert len(ranked) == lh.npars - 1
    for imp in ranked:
        i = lh.labels.index(imp.name)
        ref = lh.fit({i: best.x[i] + unc.error[i]}).x[lh.poi] - best.x[lh.poi]
        assert imp.up == pytest.approx(ref, abs=1e-6)
        # more background (gamma up) means less signal
        assert imp.up < 0 < imp.down


def test_goodness_of_fit_follows_its_definition():
    ws = _workspace()
    lh = Likelihood.from_workspace(ws)
    best = lh.fit()
    lam = lh.expected_data(best.x)[: lh.nmain]
    n = lh.data[: lh.nmain]
    assert deviance(lh, best.x, lh.data) == pytest.approx(
        2 * np.sum(lam - n + n * np.log(n / lam)), rel=1e-12
    )
    # data equal to the expectation have zero deviance
    assert deviance(lh, best.x, lh.expected_data(best.x)) == pytest.approx(0.0, abs=1e-12)
    gof = goodness_of_fit(lh, best, 300, seed=11)
    assert gof.p_value == np.mean(gof.toy_deviances >= gof.deviance)
    assert 0.0 < gof.p_value < 1.0
    # reproducible with the same seed
    again = goodness_of_fit(lh, best, 300, seed=11)
    np.testing.assert_array_equal(gof.toy_deviances, again.toy_deviances)


def test_goodness_of_fit_flags_a_bad_model():
    # Observed counts far above the model's reach: the p-value collapses.
    ws = _workspace(signal=(0.1, 0.1), bkg=(50.0, 60.0), unc=(0.5, 0.6), obs=(50.0, 140.0))
    lh = Likelihood.from_workspace(ws)
    gof = goodness_of_fit(lh, lh.fit(), 200, seed=2)
    assert gof.p_value < 0.01
