"""The dense model equals pyhf's, and batched fits equal one-by-one fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

from knunu.errors import FitError
from knunu.fits import dense
from knunu.fits.infer import Likelihood, _kkt_gradient, deviance, goodness_of_fit
from knunu.fits.workspace import load_workspace, published_workspace_path


def _small() -> pyhf.Workspace:
    """Two channels with every supported modifier, asymmetric and strong variations."""

    def sample(name, data, mods):
        return {"name": name, "data": data, "modifiers": mods}

    stat = lambda ch, d: {"name": f"stat_{ch}", "type": "staterror", "data": d}  # noqa: E731
    sr = [
        sample(
            "signal",
            [4.0, 9.0, 2.0],
            [
                {"name": "mu", "type": "normfactor", "data": None},
                {"name": "eff", "type": "normsys", "data": {"hi": 1.1, "lo": 0.85}},
                {"name": "shape", "type": "histosys",
                 "data": {"hi_data": [5.0, 9.5, 1.0], "lo_data": [3.5, 8.0, 2.6]}},
                stat("sr", [0.4, 0.6, 0.3]),
            ],
        ),
        sample(
            "bkg",
            [50.0, 30.0, 12.0],
            [
                {"name": "k_bkg", "type": "normfactor", "data": None},
                {"name": "bnorm", "type": "normsys", "data": {"hi": 1.3, "lo": 0.6}},
                {"name": "eff", "type": "normsys", "data": {"hi": 1.05, "lo": 0.97}},
                {"name": "shape", "type": "histosys",
                 "data": {"hi_data": [55.0, 29.0, 10.0], "lo_data": [47.0, 32.0, 13.5]}},
                stat("sr", [3.0, 2.5, 1.5]),
            ],
        ),
    ]  # fmt: skip
    cr = [
        sample(
            "bkg",
            [200.0, 150.0],
            [
                {"name": "k_bkg", "type": "normfactor", "data": None},
                {"name": "bnorm", "type": "normsys", "data": {"hi": 1.2, "lo": 0.7}},
                stat("cr", [8.0, 0.0]),
            ],
        )
    ]
    spec = {
        "channels": [{"name": "sr", "samples": sr}, {"name": "cr", "samples": cr}],
        "observations": [
            {"name": "sr", "data": [60.0, 41.0, 13.0]},
            {"name": "cr", "data": [205.0, 140.0]},
        ],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    return pyhf.Workspace(spec)


@pytest.fixture(scope="module", params=["small", "published"])
def workspace(request):
    return _small() if request.param == "small" else load_workspace(published_workspace_path())


def _points(model, n, seed):
    """Random parameter points: near the init and far from it (|alpha| > 1 too)."""
    rng = np.random.default_rng(seed)
    init = np.asarray(model.config.suggested_init(), dtype=float)
    bounds = np.asarray(model.config.suggested_bounds(), dtype=float)
    for k in range(n):
        x = init + rng.normal(0.0, 0.3 if k % 2 else 1.6, len(init))
        x = np.clip(x, bounds[:, 0] + 1e-3, bounds[:, 1])
        if k == 1:
            x[model.config.poi_index] = 0.0  # the product rule at a vanishing normfactor
        yield x


def test_logpdf_and_expected_data_equal_pyhf(workspace):
    pyhf.set_backend("jax")
    model = workspace.model()
    dm = dense.compile_model(model)
    data = jnp.asarray(workspace.data(model))
    for x in _points(model, 12, 1):
        ref = float(model.logpdf(jnp.asarray(x), data)[0])
        assert float(dense.logpdf(dm, jnp.asarray(x), data)) == pytest.approx(ref, abs=1e-9)
        lam = np.asarray(model.expected_actualdata(jnp.asarray(x)))
        np.testing.assert_allclose(dense.expected_main(dm, jnp.asarray(x)), lam, rtol=1e-12)


def test_jacobian_equals_autodiff_of_pyhf(workspace):
    pyhf.set_backend("jax")
    model = workspace.model()
    dm = dense.compile_model(model)
    auto = jax.jacrev(model.expected_actualdata)
    for x in _points(model, 6, 2):
        _lam, jac = dense.expected_and_jacobian(dm, jnp.asarray(x))
        ref = np.asarray(auto(jnp.asarray(x)))
        np.testing.assert_allclose(jac, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())


def test_a_sample_pushed_below_zero_is_clipped_as_pyhf_clips_it():
    # the small model's signal shape variation (bin 3: 2 -> 1 at alpha = 1) empties that bin
    # at alpha = 2 and goes negative beyond: pyhf with clip_sample_data=0 counts it as 0
    pyhf.set_backend("jax")
    ws = _small()
    model = ws.model(clip_sample_data=0.0)
    dm = dense.compile_model(model)
    assert dm.clip
    assert not dense.compile_model(ws.model()).clip
    cfg = model.config
    data = jnp.asarray(ws.data(model))
    auto = jax.jacrev(model.expected_actualdata)
    for alpha in (1.5, 3.0, 4.5):
        x = np.asarray(cfg.suggested_init(), dtype=float)
        x[cfg.par_slice("shape")] = alpha
        by_sample = np.asarray(ws.model().main_model.expected_data(x, return_by_sample=True))
        signal = by_sample[cfg.samples.index("signal"), cfg.channel_slices["sr"]]
        assert (signal[2] < 0) == (alpha > 2)  # the unclipped signal of bin 3
        xj = jnp.asarray(x)
        ref = float(model.logpdf(xj, data)[0])
        assert float(dense.logpdf(dm, xj, data)) == pytest.approx(ref, abs=1e-9)
        lam, jac = dense.expected_and_jacobian(dm, xj)
        np.testing.assert_allclose(lam, model.expected_actualdata(xj), rtol=1e-12)
        np.testing.assert_allclose(jac, auto(xj), rtol=1e-9, atol=1e-12)


def test_a_normfactor_at_zero_keeps_its_derivative_when_clipped():
    # counted as clipped at exactly 0, a POI at its lower bound had no gradient: a fit started
    # there (goodness-of-fit toys start at the best fit) could never leave it
    pyhf.set_backend("jax")
    ws = _small()
    model = ws.model()
    clipped, plain = dense.compile_model(ws.model(clip_sample_data=0.0)), dense.compile_model(model)
    x = np.asarray(model.config.suggested_init(), dtype=float)
    x[model.config.poi_index] = 0.0
    jac_c = np.asarray(dense.expected_and_jacobian(clipped, jnp.asarray(x))[1])
    jac_p = np.asarray(dense.expected_and_jacobian(plain, jnp.asarray(x))[1])
    np.testing.assert_array_equal(jac_c, jac_p)
    assert np.abs(jac_c[:, model.config.poi_index]).max() > 1.0
    lh = Likelihood.from_workspace(ws)
    assert lh.fit(init=x).x[lh.poi] == pytest.approx(lh.fit().x[lh.poi], abs=1e-5)


def test_newton_step_solves_the_fisher_system(workspace):
    # the Woodbury/Schur step equals a dense solve on the active parameters, with the POI
    # held at its lower bound (pushed outward) and a fixed parameter
    lh = Likelihood.from_workspace(workspace)
    best = lh.fit()
    x = best.x.copy()
    x[lh.poi] = lh.bounds[lh.poi, 0]
    free = np.ones(lh.npars, dtype=bool)
    free[list(lh.suggested_fixed)] = False
    free[lh.npars - 1] = False
    value, step, edm = dense.newton_step(
        lh.dense, jnp.asarray(x), jnp.asarray(lh.data), jnp.asarray(free), jnp.asarray(lh.bounds)
    )
    v, g = lh.value_and_grad(x)
    gf = _kkt_gradient(g, x, lh.bounds, free)
    active = free & (gf != 0)
    ref = np.zeros(lh.npars)
    ref[active] = np.linalg.solve(lh.fisher(x)[np.ix_(active, active)], gf[active])
    assert float(value) == pytest.approx(v, abs=1e-9)
    np.testing.assert_allclose(step, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
    assert float(edm) == pytest.approx(0.5 * gf @ ref, rel=1e-8)


def test_fit_many_equals_one_by_one_fits(workspace):
    lh = Likelihood.from_workspace(workspace)
    assert lh.dense is not None
    best = lh.fit()
    toys = lh.sample(best.x, 80, seed=5)
    many = lh.fit_many(toys, init=best.x)
    assert not many.failed
    assert many.batched.mean() > 0.9  # the batch does the work, not the fallback
    for k, toy in enumerate(toys):
        one = lh.with_data(toy).fit(init=best.x)
        assert many.x[k, lh.poi] == pytest.approx(one.x[lh.poi], abs=1e-6)
        assert many.nll[k] == pytest.approx(one.nll, abs=1e-8)


def test_goodness_of_fit_p_value_equals_the_one_by_one_computation(workspace):
    lh = Likelihood.from_workspace(workspace)
    best = lh.fit()
    gof = goodness_of_fit(lh, best, 60, seed=11)
    toys = lh.sample(best.x, 60, 11)
    dev = [deviance(lh, lh.with_data(t).fit(init=best.x).x, t) for t in toys]
    np.testing.assert_allclose(gof.toy_deviances, dev, atol=1e-6)
    assert gof.p_value == np.mean(np.asarray(dev) >= gof.deviance)


def test_fit_many_lists_the_datasets_it_cannot_fit():
    lh = Likelihood.from_workspace(_small())
    best = lh.fit()
    toys = lh.sample(best.x, 10, seed=3)
    toys[4, 0] = np.nan  # a dataset no strategy can fit
    many = lh.fit_many(toys, init=best.x)
    assert many.failed == (4,)
    assert np.isnan(many.x[4]).all()
    assert np.isfinite(many.x[np.arange(10) != 4]).all()


def test_fit_many_with_a_fixed_parameter_per_dataset():
    lh = Likelihood.from_workspace(_small())
    best = lh.fit()
    fixes = [{lh.poi: mu} for mu in (0.0, 0.5, 2.0, 4.0)]
    many = lh.fit_many(np.tile(lh.data, (4, 1)), init=best.x, fixed=fixes)
    for k, fix in enumerate(fixes):
        one = lh.fit(fix)
        assert many.x[k, lh.poi] == fix[lh.poi]
        assert many.nll[k] == pytest.approx(one.nll, abs=1e-8)


def test_a_model_with_other_modifiers_keeps_pyhfs_graph():
    model = pyhf.simplemodels.uncorrelated_background([5.0, 10.0], [50.0, 60.0], [5.0, 12.0])
    with pytest.raises(FitError, match="shapesys"):
        dense.compile_model(model)
    spec = {
        "channels": model.spec["channels"],
        "observations": [{"name": "singlechannel", "data": [62.0, 66.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    lh = Likelihood.from_workspace(pyhf.Workspace(spec))
    assert lh.dense is None
    toys = lh.sample(lh.fit().x, 5, seed=1)
    many = lh.fit_many(toys)
    assert not many.batched.any()
    assert not many.failed
    assert many.x[2, lh.poi] == pytest.approx(lh.with_data(toys[2]).fit().x[lh.poi], abs=1e-6)


_FIT = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING)
import pyhf
from knunu.fits.infer import Likelihood
model = pyhf.simplemodels.uncorrelated_background([3.0, 6.0], [40.0, 20.0], [4.0, 3.0])
workspace = pyhf.Workspace({
    "channels": model.spec["channels"],
    "observations": [{"name": "singlechannel", "data": [46.0, 27.0]}],
    "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
    "version": "1.0.0",
})
print(json.dumps(Likelihood.from_workspace(workspace).fit().x.tolist()))
"""


def _fit_in_a_process(cache: str, home: str) -> tuple[list[float], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env[dense.CACHE_ENV] = cache
    env["XDG_CACHE_HOME"] = home
    out = subprocess.run(
        [sys.executable, "-c", _FIT], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1]), out.stderr


def test_compiled_programs_persist_between_processes(tmp_path):
    """A fit compiles its programs once: a second process finds every one in the cache and
    fits the same minimum; ``off`` writes no cache."""
    cache, home = tmp_path / "jax", tmp_path / "home"
    first, err = _fit_in_a_process(str(cache), str(home))
    assert "Warning" not in err
    entries = sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache"))
    assert len(entries) > 10
    assert _fit_in_a_process(str(cache), str(home))[0] == first
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache")) == entries
    assert _fit_in_a_process("off", str(home))[0] == first
    assert not home.exists()  # nor the default cache
    # a cache that cannot be made: one line says so, the fit is the same, jax warns of nothing
    (tmp_path / "file").write_text("")
    again, err = _fit_in_a_process(str(tmp_path / "file" / "jax"), str(home))
    assert again == first
    assert [line for line in err.splitlines() if line.strip()] == [
        f"WARNING:knunu.fits.dense:compiled likelihoods are not kept: cannot create "
        f"{tmp_path / 'file' / 'jax'} ([Errno 20] Not a directory: '{tmp_path / 'file' / 'jax'}')"
    ]
