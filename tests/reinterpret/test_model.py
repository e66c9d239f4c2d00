"""Alternative signal models written into a workspace as plain HistFactory samples."""

from __future__ import annotations

import json

import numpy as np
import pyhf
import pytest

from knunu.errors import InputError
from knunu.fits.infer import Likelihood
from knunu.fits.workspace import load_workspace, published_workspace_path
from knunu.reinterpret import maps, scan, spectra
from knunu.reinterpret.model import Term, alternative_workspace


@pytest.fixture(scope="module")
def published():
    return load_workspace(published_workspace_path()), maps.published_maps()


def test_weights_of_one_give_the_sm_template_back(published):
    ws, pm = published
    alt = alternative_workspace(ws, pm, [Term("c", np.ones(101))])
    plain = Likelihood.from_workspace(ws)
    other = Likelihood.from_workspace(alt)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = plain.init + rng.normal(0, 0.3, plain.npars) * (plain.init != 0)
        x[plain.poi] = 4.2
        for name in ("corr_ff_c1", "corr_ff_c2", "corr_ff_c3"):  # they leave with the SM
            x[plain.labels.index(name)] = 0.0
        y = np.array([x[plain.labels.index(n)] if n != "c" else 4.2 for n in other.labels])
        np.testing.assert_allclose(
            other.expected_data(y)[: other.nmain], plain.expected_data(x)[: plain.nmain],
            rtol=1e-10,
        )  # fmt: skip


def test_the_wet_workspace_is_valid_histfactory_and_round_trips(published, tmp_path):
    ws, pm = published
    wet = scan.wet_workspace(ws, pm, spectra.NULLS["belle2"])
    path = tmp_path / "wet.json"
    path.write_text(json.dumps(dict(wet)))
    back = load_workspace(path)  # pyhf's schema, no custom modifier
    model = back.model()
    assert model.config.poi_name == "wet_V"
    assert not {"mu", "corr_ff_c1"} & set(model.config.par_names)
    ff = [p for p in model.config.par_names if p.startswith(spectra.FF_PREFIX)]
    assert len(ff) == 8
    samples = set(model.config.samples)
    assert {"signal_wet_V", "signal_wet_S", "signal_wet_T", "sgn_1_had_wet_T"} <= samples


def test_a_signal_channel_without_a_map_is_an_input_error(published):
    ws, pm = published
    partial = {k: v for k, v in pm.items() if k != "hta_sr"}
    with pytest.raises(InputError, match="sgn1_had: signal without a map"):
        alternative_workspace(ws, partial, [Term("c", np.ones(101))])


def test_maps_align_with_a_channel_that_lost_empty_bins():
    spec = {
        "channels": [
            {
                "name": "hta_sr",
                "samples": [
                    {"name": "signal", "data": [2.0, 3.0],
                     "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
                    {"name": "bbbar", "data": [10.0, 10.0], "modifiers": []},
                ],
            }
        ],
        "observations": [{"name": "hta_sr", "data": [12, 13]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }  # fmt: skip
    values = np.zeros((4, 101))
    values[1, 5], values[3, 50] = 2.0, 3.0  # rows 0 and 2 were empty and dropped
    m = {"hta_sr": maps.Map("hta_sr", values, None, "test")}
    weights = np.ones(101)
    weights[50] = 2.0
    alt = alternative_workspace(pyhf.Workspace(spec), m, [Term("c", weights)])
    (sig,) = [s for s in alt["channels"][0]["samples"] if s["name"] == "signal_c"]
    assert sig["data"] == [2.0, 6.0]
    # a map at the run's luminosity against templates scaled to another: the same alignment
    m_small = {"hta_sr": m["hta_sr"]._replace(values=values / 3300.0)}
    alt = alternative_workspace(pyhf.Workspace(spec), m_small, [Term("c", weights)])
    (sig,) = [s for s in alt["channels"][0]["samples"] if s["name"] == "signal_c"]
    np.testing.assert_allclose(sig["data"], [2.0, 6.0], rtol=1e-12)
    values[3, 50] = 4.0  # a map from another production: no alignment
    with pytest.raises(InputError, match="do not match"):
        alternative_workspace(pyhf.Workspace(spec), m, [Term("c", weights)])
    values[0, 7] = 1.0  # same number of rows as bins, other shape: refused too
    full = {"hta_sr": maps.Map("hta_sr", values[[1, 3]] * [[1.0], [0.5]], None, "test")}
    with pytest.raises(InputError, match="do not match"):
        alternative_workspace(pyhf.Workspace(spec), full, [Term("c", weights)])


def test_form_factor_nuisances_follow_the_exact_rate(published):
    # each eigen-direction of the form-factor covariance is a histosys at +-1 sigma; at 1.5
    # sigma (piecewise-linear extrapolation) the template stays within 1 % of the rate
    # recomputed with the shifted form factors
    ws, pm = published
    null = spectra.NULLS["belle2"]
    lh = Likelihood.from_workspace(scan.wet_workspace(ws, pm, null))
    ff = spectra.form_factors()
    shifts = ff.eigen_shifts()
    x0 = lh.init.copy()
    for name in ("wet_S", "wet_T"):
        x0[lh.labels.index(name)] = 0.0
    base = lh.expected_data(x0)[: lh.nmain]
    x0[lh.labels.index("wet_V")] = 0.0
    background = lh.expected_data(x0)[: lh.nmain]
    x0[lh.labels.index("wet_V")] = 1.0
    signal_nominal = base - background
    for e in range(len(shifts)):
        x = x0.copy()
        x[lh.labels.index(f"{spectra.FF_PREFIX}{e}")] = 1.5
        varied = lh.expected_data(x)[: lh.nmain] - background
        exact_w = spectra.wet_weights(null, ff.mean + 1.5 * shifts[e])[0]
        nominal_w = spectra.wet_weights(null)[0]
        # the exact shifted template from the same map and weights
        ratio_exact = _templates_total(ws, pm, exact_w) / _templates_total(ws, pm, nominal_w)
        ratio_model = varied.sum() / signal_nominal.sum()
        assert ratio_model == pytest.approx(ratio_exact, rel=0.01), e


def _templates_total(ws, pm, weights):
    alt = alternative_workspace(ws, pm, [Term("c", weights)])
    return sum(
        sum(s["data"]) for c in alt["channels"] for s in c["samples"] if s["name"].endswith("_c")
    )
