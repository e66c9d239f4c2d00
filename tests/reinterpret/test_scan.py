"""Fits of the alternative models: they return what was injected and agree with the plain fit."""

from __future__ import annotations

import numpy as np
import pyhf
import pytest

from knunu.errors import FitError
from knunu.fits.infer import Likelihood, build_model
from knunu.fits.workspace import load_workspace, published_workspace_path
from knunu.reinterpret import maps, scan, spectra
from knunu.reinterpret.model import SIGNAL_SAMPLES, Term, alternative_workspace

NULL = spectra.NULLS["belle2"]


@pytest.fixture(scope="module")
def published():
    return load_workspace(published_workspace_path()), maps.published_maps()


@pytest.fixture(scope="module")
def wet(published):
    ws, pm = published
    return Likelihood.from_workspace(scan.wet_workspace(ws, pm, NULL))


def test_the_vector_coupling_alone_is_the_signal_strength(published, wet):
    ws, _ = published
    plain = Likelihood.from_workspace(ws)
    mu = plain.fit().x[plain.poi]
    result = scan.fit_wet(wet, "observed", n_grid=5, pairs=(), template_yield=scan.signal_yield(ws))
    # (|C_V| / C_SM)^2 x the SM yield of the WET model = mu: the same excess, up to the
    # q2 shape of the form factors (BSZ2015 fit vs the MC's HPQCD) and 8 vs 3 FF nuisances
    assert result.mu_equivalent == pytest.approx(mu, rel=0.03)
    # the published likelihood's WET fit (profile): near the paper's posterior mode
    assert result.best["wet_V"] == pytest.approx(11.3, abs=1.0)
    assert result.best["wet_T"] == pytest.approx(8.21, abs=1.0)
    assert result.best["wet_S"] < 2.0


def test_an_injected_wet_point_is_recovered(wet):
    idx = {n: wet.labels.index(n) for n in spectra.WET_TERMS}
    x = wet.init.copy()
    truth = {"wet_V": 9.0, "wet_S": 0.0, "wet_T": 6.0}
    for name, c in truth.items():
        x[idx[name]] = (c / spectra.C_VL_SM) ** 2
    asimov = wet.with_data(wet.expected_data(x))
    result = scan.fit_wet(asimov, "Asimov", n_grid=11, pairs=(("wet_V", "wet_T"),), n_grid_2d=6)
    for name, c in truth.items():
        assert result.best[name] == pytest.approx(c, abs=0.05)
    # the profile is at its minimum near the truth, and the 68 % interval covers it
    (lo, hi), *_ = result.intervals["wet_V"]["68%"]
    assert lo < 9.0 < hi
    assert result.failed_fits == 0
    assert result.contours["wet_V:wet_T"][2].shape == (6, 6)


def test_the_mass_scan_finds_an_injected_particle(published):
    ws, pm = published
    # Asimov data: SM signal at mu = 1 plus X at 2 GeV with B = 6e-6
    x_ws = scan.x_workspace(ws, pm, NULL, 2.0)
    lh = Likelihood.from_workspace(x_ws)
    x = lh.init.copy()
    x[lh.poi] = 6.0
    data = lh.expected_data(x)[: lh.nmain]
    result = scan.scan_x(ws, pm, NULL, [2.0, 4.0], data=data, data_label="Asimov")
    assert result.best[0] == pytest.approx(6e-6, rel=1e-3)
    assert result.local_z[0] > 2
    assert result.local_z[0] > result.local_z[1] + 1
    assert result.observed[0] > 6e-6
    assert result.expected[0] < result.observed[0]


def test_a_narrow_particle_agrees_with_a_direct_template_fit_in_pyhf(published):
    # at a q2gen bin centre the interpolated template is that column's: build it by hand
    # (map column x B / null B of the bin) into a workspace and fit it with pyhf's own MLE
    ws, pm = published
    j = 20
    m_x = float(np.sqrt(0.5 * (maps.Q2_EDGES[j] + maps.Q2_EDGES[j + 1])))
    null_bin = spectra.null_integrals(NULL)[j]
    spec = dict(ws)
    channels = []
    for channel in spec["channels"]:
        region = maps.PUBLISHED_CHANNELS.get(channel["name"])
        samples = list(channel["samples"])
        if region is not None:
            (sm,) = [s for s in samples if s["name"] in SIGNAL_SAMPLES]
            m = pm[region].values
            column = np.asarray(sm["data"]) / m.sum(axis=1) * m[:, j] * spectra.BF_UNIT / null_bin
            rel = next(mod for mod in sm["modifiers"] if mod["type"] == "staterror")
            share = np.asarray(rel["data"]) / np.asarray(sm["data"]) / np.sqrt(2)
            stat = {**rel, "data": (share * (column + np.asarray(sm["data"]))).tolist()}
            sm = {**sm, "modifiers": [stat if mod is rel else mod for mod in sm["modifiers"]]}
            samples = [s if s["name"] not in SIGNAL_SAMPLES else sm for s in samples]
            ratio = column / np.asarray(sm["data"])
            mods = [{"name": "bf", "type": "normfactor", "data": None}, stat]
            for mod in sm["modifiers"]:  # the signal's systematics, relative (FF: the SM's)
                if mod["type"] == "normsys":
                    mods.append(mod)
                elif mod["type"] == "histosys" and not mod["name"].startswith("corr_ff"):
                    data = {k: (np.asarray(v) * ratio).tolist() for k, v in mod["data"].items()}
                    mods.append({**mod, "data": data})
            samples.append({"name": "direct_X", "data": column.tolist(), "modifiers": mods})
        channels.append({**channel, "samples": samples})
    params = [{"name": "bf", "bounds": [[0, 1e4]], "inits": [1.0]},
              {"name": "mu", "fixed": True, "inits": [1.0]}]  # fmt: skip
    direct = pyhf.Workspace(
        {**spec, "channels": channels,
         "measurements": [{"name": "d", "config": {"poi": "bf", "parameters": params}}]}
    )  # fmt: skip
    pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer(tolerance=1e-12))
    try:
        model = direct.model()
        best = pyhf.infer.mle.fit(direct.data(model), model)
    finally:
        pyhf.set_backend("numpy", pyhf.optimize.scipy_optimizer())
    ours = scan.scan_x(ws, pm, NULL, [m_x], expected=False)
    assert ours.best[0] == pytest.approx(best[model.config.poi_index] * spectra.BF_UNIT, rel=2e-3)


def test_a_variant_is_the_model_compiled_afresh(published):
    ws, pm = published
    base = Likelihood.from_workspace(scan.x_workspace(ws, pm, NULL, 1.0))
    other_ws = scan.x_workspace(ws, pm, NULL, 2.5)
    fresh = Likelihood.from_workspace(other_ws)
    variant = base.variant(fresh.model)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = fresh.init + rng.normal(0, 0.2, fresh.npars) * (fresh.init != 0)
        assert variant.nll(x) == pytest.approx(fresh.nll(x), rel=1e-12)
        np.testing.assert_allclose(variant.value_and_grad(x)[1], fresh.value_and_grad(x)[1])
    assert variant.fit().nll == pytest.approx(fresh.fit().nll, abs=1e-6)
    # a model that differs in more than its templates is refused, never fitted wrongly
    other = alternative_workspace(
        ws, pm, [Term(scan.X_TERM, spectra.x_weights(2.5, NULL))], keep_sm_signal=True,
        bounds={scan.X_TERM: (0.0, 50.0)},
    )  # fmt: skip
    with pytest.raises(FitError, match="bounds"):
        base.variant(build_model(other))
