"""Inference on small models, cross-checked against pyhf's own implementation."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pyhf
import pytest
import scipy.optimize

from knunu.errors import FitError, LimitAboveBoundError, WorkspaceError
from knunu.fits.infer import (
    FitResult,
    Likelihood,
    asimov_data,
    build_model,
    cls,
    deviance,
    goodness_of_fit,
    impacts,
    upper_limit,
)
from knunu.fits.report import analyse, markdown_table
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


def test_fit_accepts_a_minimum_near_enough_and_refuses_one_that_is_not(monkeypatch):
    # No strategy reaches an EDM of 0: the best is accepted below EDM_ACCEPT, refused above
    import knunu.fits.infer as infer

    lh = Likelihood.from_workspace(_workspace())
    reference = lh.fit()
    monkeypatch.setattr(infer, "EDM_TOLERANCE", 0.0)
    accepted = lh.fit()
    assert accepted.edm < infer.EDM_ACCEPT
    assert accepted.x[lh.poi] == pytest.approx(reference.x[lh.poi], abs=1e-3)
    monkeypatch.setattr(infer, "EDM_ACCEPT", 0.0)
    with pytest.raises(FitError, match="did not converge"):
        lh.fit()


def test_a_fit_ending_where_the_nll_is_not_finite_is_refused():
    # mu held at -50: both bins expect a negative yield whatever the gammas do; the minimiser
    # stops there with a tiny EDM, and that point used to be returned as converged (NLL nan,
    # so q_mu = max(0, nan) = 0 and a significance of 0 was printed). Samples unclipped, as
    # knunu builds a model whose normfactors may go negative (clipped, the signal would vanish)
    lh = Likelihood.from_workspace(_workspace(), clip_sample_data=None)
    with pytest.raises(FitError, match="not finite"):
        lh.profile(lh.poi, -50.0)


def test_a_negative_yield_in_an_empty_bin_has_no_likelihood():
    # With no events in a bin the Poisson formula alone gives lambda < 0 a log-likelihood of
    # -lambda > 0, so a fit could lower the NLL without bound by driving the yield negative (a
    # default run's fit of pseudo-data with an empty off-resonance channel did: every nuisance
    # went to its bound, mu to -7). pyhf has the hazard; the dense engine refuses the point.
    ws = _workspace(signal=(10.0, 10.0), obs=(0.0, 66.0))
    spec = copy.deepcopy(dict(ws))
    spec["measurements"][0]["config"]["parameters"] = [{"name": "mu", "bounds": [[-10.0, 10.0]]}]
    ws = pyhf.Workspace(spec)
    lh = Likelihood.from_workspace(ws)
    x = lh.init.copy()
    x[lh.poi] = -6.0  # first bin: 50 - 60 < 0, no events; second: 60 - 60 = 0 with 66
    pyhf.set_backend("numpy")
    model = ws.model()
    pars = np.asarray(model.config.suggested_init(), dtype=float)
    pars[model.config.poi_index] = -5.5  # second bin 5 > 0: pyhf's NLL is finite here
    assert np.isfinite(float(model.logpdf(pars, ws.data(model))[0]))
    y = lh.init.copy()
    y[lh.poi] = -5.5
    assert lh.nll(y) == np.inf  # the first bin expects 50 - 55 < 0 without events
    assert lh.nll(x) == np.inf
    best = lh.fit()  # the best fit stays where every yield is positive
    assert (lh.expected_data(best.x)[: lh.nmain] >= 0).all()


def test_profile_retries_from_the_model_init():
    # from a starting point where nothing is finite the profile starts again from the init
    lh = Likelihood.from_workspace(_workspace())
    start = np.full(lh.npars, np.nan)
    with pytest.raises(FitError):
        lh.fit({lh.poi: 1.0}, start)
    assert lh.profile(lh.poi, 1.0, start).nll == pytest.approx(lh.profile(lh.poi, 1.0).nll)


def test_impacts_refit_from_the_init_where_the_best_fit_start_fails():
    # mu at -3.7 leaves the first bin's yield near zero: a shifted gamma started from the best
    # fit with its curvature runs into a negative yield, the refit from the init converges
    ws = _workspace(unc=(40.0, 55.0), obs=(5.0, 400.0))
    spec = copy.deepcopy(ws)
    spec["measurements"][0]["config"]["parameters"] = [{"name": "mu", "bounds": [[-5.0, 2.0]]}]
    lh = Likelihood.from_workspace(pyhf.Workspace(spec))
    best = lh.fit()
    unc = lh.uncertainties(best)
    matrix = lh.fisher(best.x)
    failed = []
    for i in range(lh.npars):
        if i == lh.poi:
            continue
        for sign in (1.0, -1.0):
            value = float(np.clip(best.x[i] + sign * unc.error[i], *lh.bounds[i]))
            try:
                lh.fit({i: value}, best.x, curvature=matrix)
            except FitError:
                failed.append((i, value))
    assert failed  # the case the fallback is for
    ranked = {imp.name: imp for imp in impacts(lh, best, unc).impacts}
    for i, value in failed:
        imp = ranked[lh.labels[i]]
        shift = lh.profile(i, value).x[lh.poi] - best.x[lh.poi]
        # two fits that each stop at EDM < 1e-10 agree within 2 sqrt(2e-10) = 3e-5 sigma
        tol = 3e-5 * unc.error[lh.poi]
        assert shift == pytest.approx(imp.up if value > best.x[i] else imp.down, abs=tol)
    assert all(np.isfinite([imp.up, imp.down]).all() for imp in ranked.values())


def test_an_impact_whose_refit_fails_is_named_and_left_out(caplog):
    # A refit neither the batch nor lh.profile can do (a real case: a MC-statistics gamma held
    # at its best fit + 1.8 in the default scale's unblinded combined fit) is left out of the
    # ranking and named; the rest stand. The failure is injected: the first parameter's
    # batch refits are marked failed and its fallback raises, as that fit did.
    lh = Likelihood.from_workspace(_workspace())
    best = lh.fit()
    unc = lh.uncertainties(best)
    complete = impacts(lh, best, unc)
    assert complete.failed == ()
    complete = complete.impacts
    batch = lh.fit_many
    first = next(i for i in range(lh.npars) if i != lh.poi)

    def fit_many(*args, **kwargs):
        return dataclasses.replace(batch(*args, **kwargs), failed=(0, 1))

    def profile(index, value, *args, **kwargs):
        raise FitError("fit did not converge (the NLL is not finite where every strategy stopped)")

    lh.fit_many, lh.profile = fit_many, profile
    with caplog.at_level("WARNING", logger="knunu.fits.infer"):
        ranking = impacts(lh, best, unc)
    ranked = ranking.impacts
    assert ranking.failed == (lh.labels[first],)
    assert {imp.name for imp in complete} - {imp.name for imp in ranked} == {lh.labels[first]}
    assert sum(lh.labels[first] in r.getMessage() for r in caplog.records) == 2  # up and down
    assert ranked == tuple(imp for imp in complete if imp.name != lh.labels[first])
    # and the report names it
    result = dataclasses.replace(
        analyse(Likelihood.from_workspace(_workspace()), "toy", 0.9).result,
        impacts=(("other", 0.1, -0.1),),
        impacts_failed=ranking.failed,
    )
    assert f"did not converge: {lh.labels[first]}" in markdown_table((result,), False)


def test_sample_has_the_model_mean():
    ws = _workspace()
    lh = Likelihood.from_workspace(ws)
    x = lh.init
    toys = lh.sample(x, 20000, seed=3)
    assert toys.shape == (20000, len(lh.data))
    np.testing.assert_allclose(toys.mean(axis=0), lh.expected_data(x), rtol=0.02)
    np.testing.assert_array_equal(toys, lh.sample(x, 20000, seed=3))


def _crossing_workspace() -> pyhf.Workspace:
    """An empty bin whose only sample a shape variation empties at alpha = -1, and a channel
    whose data pull that variation to about -1.7: the sparse bins of a run's own workspace."""

    def sample(name, data, hi, lo, extra=()):
        mods = [{"name": "shape", "type": "histosys", "data": {"hi_data": hi, "lo_data": lo}}]
        return {"name": name, "data": data, "modifiers": mods + list(extra)}

    mu = {"name": "mu", "type": "normfactor", "data": None}
    return pyhf.Workspace(
        {
            "channels": [
                {"name": "sparse", "samples": [sample("ccbar", [0.01], [0.02], [0.0])]},
                {
                    "name": "bulk",
                    "samples": [
                        sample("bkg", [100.0], [120.0], [80.0]),
                        sample("sig", [5.0], [5.0], [5.0], [mu]),
                    ],
                },
            ],
            "observations": [{"name": "sparse", "data": [0.0]}, {"name": "bulk", "data": [60.0]}],
            "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
            "version": "1.0.0",
        }
    )


def test_a_template_emptied_by_a_shape_variation_does_not_stop_the_fit():
    # Unclipped, the sparse bin's yield 0.01 (1 + alpha) goes negative below alpha = -1: no
    # likelihood there. Fits stalled against that wall (goodness-of-fit toys of a run's own
    # workspace, 160 of 500), or stopped on it as if converged (this one did, at alpha = -1,
    # EDM 9e-11: the information 0.01^2 / lambda grows without bound as lambda -> 0). Clipped
    # at zero as knunu builds it, the fit goes on to where the bulk channel's data put alpha.
    clipped = Likelihood.from_workspace(_crossing_workspace())
    best = clipped.fit(fixed={clipped.poi: 0.0})
    alpha = best.x[clipped.model.config.par_slice("shape")][0]
    # bulk alone: 100 + 20 alpha against 60 events, with a unit Gaussian constraint
    nll = lambda a: (100 + 20 * a) - 60 * np.log(100 + 20 * a) + 0.5 * a * a  # noqa: E731
    assert alpha == pytest.approx(scipy.optimize.minimize_scalar(nll).x, abs=1e-4)
    assert alpha < -1.5


def test_samples_are_clipped_unless_a_normfactor_may_subtract():
    ws = _workspace()
    assert build_model(ws).main_model.clip_sample_data == 0.0
    assert build_model(ws, clip_sample_data=None).main_model.clip_sample_data is None
    spec = copy.deepcopy(dict(ws))
    spec["measurements"][0]["config"]["parameters"] = [{"name": "mu", "bounds": [[-5.0, 10.0]]}]
    assert build_model(pyhf.Workspace(spec)).main_model.clip_sample_data is None


def test_no_toys_from_a_point_with_negative_expected_yields():
    """A histosys extrapolated far enough empties a bin: one clear error, not numpy's."""
    spec = {
        "channels": [
            {
                "name": "c",
                "samples": [
                    {
                        "name": "s",
                        "data": [5.0],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {
                        "name": "b",
                        "data": [5.0],
                        "modifiers": [
                            {
                                "name": "shape",
                                "type": "histosys",
                                "data": {"hi_data": [9.0], "lo_data": [1.0]},
                            }
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "c", "data": [10.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    lh = Likelihood.from_workspace(pyhf.Workspace(spec), clip_sample_data=None)  # unclipped
    x = np.array(lh.init, dtype=float)
    x[lh.model.config.par_slice("mu")] = 0.0
    x[lh.model.config.par_slice("shape")] = -3.0  # 5 + 3 (1 - 5) = -7 events
    with pytest.raises(FitError, match=r"expects -7 events in bin 0"):
        lh.sample(x, 10, seed=1)


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
    ranked = impacts(lh, best, unc).impacts
    assert [i.size for i in ranked] == sorted((i.size for i in ranked), reverse=True)
    assert len(ranked) == lh.npars - 1
    for imp in ranked:
        i = lh.labels.index(imp.name)
        ref = lh.fit({i: best.x[i] + unc.error[i]}).x[lh.poi] - best.x[lh.poi]
        # two fits that each stop at EDM < 1e-10 agree within 2 sqrt(2e-10) = 3e-5 sigma
        assert imp.up == pytest.approx(ref, abs=3e-5 * unc.error[lh.poi])
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


def test_a_limit_above_the_poi_bound_is_reported_not_invented():
    # 0.2 expected signal events on 50 background: the 90 % CLs limit lies far above mu = 10
    lh = Likelihood.from_workspace(_workspace(signal=(0.1, 0.1), obs=(52.0, 61.0)))
    with pytest.raises(LimitAboveBoundError, match="above the POI bound 10"):
        upper_limit(lh, lh.fit())
    result = analyse(lh, "ita").result
    assert result.upper_limit is None
    assert result.limit_bound == 10.0
    assert "> 10 (90%)" in markdown_table((result,), published=False)


def test_no_curvature_in_mu_gives_undefined_errors_and_a_one_sided_interval():
    # no events where the signal lives: mu sits at 0 with a flat likelihood in mu, so the
    # stat-only and Hesse errors are undefined; MINOS steps through the range to the bound
    lh = Likelihood.from_workspace(
        _workspace(signal=(1.0, 0.0), bkg=(0.5, 5.0), unc=(0.05, 0.5), obs=(0.0, 5.0))
    )
    result = analyse(lh, "hta").result
    assert result.mu == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(result.stat)
    assert np.isnan(result.mu_hesse)
    assert np.isnan(result.syst)
    # with no events the NLL grows as mu * s: it rises by 0.5 at mu = 0.5 (s = 1)
    assert result.minos_down == 0.0
    assert result.minos_up == pytest.approx(0.5, abs=1e-5)  # brentq's xtol


def test_failed_goodness_of_fit_toys_are_counted_and_left_out(monkeypatch):
    lh = Likelihood.from_workspace(_workspace())
    best = lh.fit()
    real_fit = Likelihood.fit
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) in (3, 7):  # two of 60 toy fits fail
            raise FitError("fit did not converge (test)")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(Likelihood, "fit", flaky)
    gof = goodness_of_fit(lh, best, 60, seed=4)
    assert gof.failed == (2, 6)
    assert len(gof.toy_deviances) == 58
    assert gof.p_value == np.mean(gof.toy_deviances >= gof.deviance)
    calls.clear()

    def broken(self, *args, **kwargs):
        raise FitError("fit did not converge (test)")

    monkeypatch.setattr(Likelihood, "fit", broken)
    with pytest.raises(FitError, match="60 of 60 toy fits failed"):
        goodness_of_fit(lh, best, 60, seed=4)


def _kinked_workspace(lo_data=(0.8, -1.0), second=False):
    """A background whose down variation empties (and, clipped, drops) a bin with 3 events.

    In bin 2 the background is 1 + 2 alpha, clipped at zero from alpha = -0.5. Its gradient
    there is alpha + 2 (1 - 3 / 5) = 0.3 where it counts and alpha = -0.5 where it is clipped:
    the minimum sits on the kink, where no one-sided gradient vanishes.
    """
    spec = {
        "channels": [
            {
                "name": "sr",
                "samples": [
                    {
                        "name": "sig",
                        "data": [2.0, 0.5],
                        "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
                    },
                    {"name": "other", "data": [10.0, 5.0], "modifiers": []},
                    {
                        "name": "bkg",
                        "data": [1.0, 1.0],
                        "modifiers": [
                            {
                                "name": "alpha",
                                "type": "histosys",
                                "data": {"hi_data": [1.2, 3.0], "lo_data": list(lo_data)},
                            },
                            *(
                                [
                                    {
                                        "name": "beta",
                                        "type": "histosys",
                                        "data": {"hi_data": [0.9, 2.0], "lo_data": [1.1, 0.0]},
                                    }
                                ]
                                if second
                                else []
                            ),
                        ],
                    },
                ],
            }
        ],
        "observations": [{"name": "sr", "data": [12.0, 3.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    return pyhf.Workspace(spec)


def _edge_workspace() -> pyhf.Workspace:
    """A bin without events that the background's down variation can empty, unclipped.

    :func:`_kinked_workspace` with no events and no other background in bin 2, and mu allowed
    below zero, so the model does not clip samples (``build_model``). Bin 2 expects about
    0.5 mu + 1 + 2 alpha; with no events its NLL term is that expectation, whose slope in
    alpha (2) beats the constraint's (alpha) down to where the bin expects nothing: the
    minimum sits on the edge of the likelihood's domain.
    """
    spec = copy.deepcopy(dict(_kinked_workspace()))
    spec["channels"][0]["samples"][1]["data"] = [10.0, 0.0]
    spec["observations"][0]["data"] = [12.0, 0.0]
    spec["measurements"][0]["config"]["parameters"] = [{"name": "mu", "bounds": [[-5.0, 10.0]]}]
    return pyhf.Workspace(spec)


def test_a_stop_on_the_likelihoods_edge_is_moved_along_it_to_the_minimum():
    lh = Likelihood.from_workspace(_edge_workspace())
    assert lh.dense is not None
    assert not lh.dense.clip
    free = np.ones(lh.npars, dtype=bool)
    # the minimum: the empty bin expects nothing there
    best = lh._minimise("fisher", lh.init.copy(), free, 200)
    lam, jac = lh._expected_and_jacobian(best.x)
    assert lam[1] == pytest.approx(0.0, abs=1e-8)
    assert lh._edges(lam)[1]
    assert lh._edge_edm(best.x, free, lh._edges(lam)) < 1e-6
    # a stop on the edge, away from the minimum along it, is not a minimum ...
    along = np.array([-jac[1, 1], jac[1, 0]])  # (alpha, mu) keeping bin 2's expectation
    stop_x = best.x + 0.3 * along / np.linalg.norm(along)
    stop_x = lh._along_edge(stop_x, np.arange(2), np.zeros(2), lh._edges(lam), np.inf)
    assert lh._edges(lh._expected_and_jacobian(stop_x)[0])[1]
    assert lh.nll(stop_x) > best.nll + 1e-3
    assert lh._edge_edm(stop_x, free, lh._edges(lh._expected_and_jacobian(stop_x)[0])) > 1e-2
    # ... and is moved along the edge to the minimum and accepted there
    stop = FitResult(stop_x, lh.nll(stop_x), 1.0, 1, "fisher")
    moved = lh._on_an_edge([stop], free)
    assert moved is not None
    assert moved.method == "fisher, on an edge"
    assert moved.edm < 1e-6
    assert moved.nll == pytest.approx(best.nll, abs=1e-7)
    np.testing.assert_allclose(moved.x, best.x, atol=1e-3)
    # no nearby point inside the domain is lower (outside it the NLL is inf)
    rng = np.random.default_rng(5)
    for scale in (1e-4, 1e-2, 0.3):
        steps = rng.normal(scale=scale, size=(300, lh.npars))
        points = np.clip(moved.x + steps, lh.bounds[:, 0], lh.bounds[:, 1])
        assert min(lh.nll(p) for p in points) >= moved.nll - 1e-7


def test_a_minimum_on_a_clipped_templates_kink_is_accepted():
    lh = Likelihood.from_workspace(_kinked_workspace())
    alpha = lh.labels.index("alpha")
    free = np.ones(lh.npars, dtype=bool)
    # every smooth strategy stops short of the EDM test there ...
    for method in ("fisher", "lbfgsb"):
        assert lh._minimise(method, lh.init.copy(), free, 200).edm > 1e-3
    # ... and the fit accepts the kink, which is the minimum: no nearby point is lower
    best = lh.fit()
    assert best.method.endswith("on a kink")
    assert best.edm < 1e-6
    assert best.x[alpha] == pytest.approx(-0.5, abs=1e-5)
    rng = np.random.default_rng(3)
    for scale in (1e-4, 1e-2, 0.3):
        steps = rng.normal(scale=scale, size=(200, lh.npars))
        points = np.clip(best.x + steps, lh.bounds[:, 0], lh.bounds[:, 1])
        assert min(lh.nll(p) for p in points) >= best.nll - 1e-9


def test_a_point_on_a_kink_that_is_not_a_minimum_is_rejected():
    lh = Likelihood.from_workspace(_kinked_workspace())
    best = lh.fit()
    free = np.ones(lh.npars, dtype=bool)
    off = best.x.copy()
    off[lh.poi] += 1.0  # on the same kink, one unit of mu away
    assert lh._kink_edm(best.x, free) < 1e-6
    assert lh._kink_edm(off, free) > 1e-2
    away = best.x.copy()
    away[lh.labels.index("alpha")] = -0.45  # off the kink: no kink to stand on
    assert lh._kink_edm(away, free) == np.inf


def test_a_template_that_stays_positive_converges_without_a_kink():
    lh = Likelihood.from_workspace(_kinked_workspace(lo_data=(0.8, 0.5)))
    best = lh.fit()
    assert not best.method.endswith("on a kink")
    assert best.edm < 1e-10


def test_a_stop_beside_a_kink_is_moved_along_it_to_the_minimum():
    # two variations move the clipped yield: the minimum lies on the line where it is zero,
    # and Fisher scoring stops on that line but not at the minimum along it
    lh = Likelihood.from_workspace(_kinked_workspace(second=True))
    free = np.ones(lh.npars, dtype=bool)
    stop = lh._minimise("fisher", lh.init.copy(), free, 200)
    assert lh._kink_edm(stop.x, free) > 1e-4
    moved = lh._onto_kinks(stop.x, free)
    assert lh.nll(moved) < stop.nll - 1e-4
    assert lh._kink_edm(moved, free) < 1e-10
    best = lh.fit()
    assert best.method.endswith("on a kink")
    assert best.nll == pytest.approx(lh.nll(moved), abs=1e-9)
    rng = np.random.default_rng(4)
    points = np.clip(best.x + rng.normal(scale=0.01, size=(300, lh.npars)), *lh.bounds.T)
    assert min(lh.nll(p) for p in points) >= best.nll - 1e-9
