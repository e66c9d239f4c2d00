"""Validation machinery on small synthetic models: projection, signal injection, line fit."""

from __future__ import annotations

import math

import numpy as np
import pyhf
import pytest

from knunu.fits.infer import Likelihood
from knunu.fits.validation import (
    KEEP_AT_BOUND,
    asimov_sigma,
    injection,
    line_fit,
    nominal_point,
    poi_range,
    projection,
    resonance_factors,
    scaled_spec,
    with_poi_bounds,
)


def _spec(signal=(2.0, 5.0, 9.0), background=(60.0, 30.0, 12.0)):
    """One channel, signal (mu) and background with an MC statistical uncertainty."""
    samples = [
        {
            "name": "signal",
            "data": list(signal),
            "modifiers": [
                {"name": "mu", "type": "normfactor", "data": None},
                {"name": "stat_sig", "type": "staterror", "data": [0.1 * s for s in signal]},
            ],
        },
        {
            "name": "bkg",
            "data": list(background),
            "modifiers": [
                {"name": "stat_bkg", "type": "staterror", "data": [0.2 * b for b in background]}
            ],
        },
    ]
    observed = [s + b for s, b in zip(signal, background, strict=True)]
    return {
        "channels": [{"name": "sr", "samples": samples}],
        "observations": [{"name": "sr", "data": observed}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def _lh(spec):
    return Likelihood.from_workspace(pyhf.Workspace(spec))


def test_projected_sigma_scales_as_one_over_sqrt_luminosity():
    # Poisson data and MC statistical constraints both gain information in proportion to the
    # luminosity, so the expected sigma(mu) must fall exactly as 1/sqrt(factor)
    spec = _spec()
    here = asimov_sigma(_lh(spec), 1.0)
    there = asimov_sigma(_lh(scaled_spec(spec, 100.0)), 1.0)
    assert there == pytest.approx(here / 10.0, rel=1e-9)


def _on_off_spec(off_luminosity):
    """On-resonance signal region and off-resonance continuum sharing its normalisation.

    The off-resonance data were taken at ``off_luminosity`` (the on-resonance's is 1).
    """
    norm = {"name": "norm_qq", "type": "normsys", "data": {"hi": 1.5, "lo": 0.5}}

    def channel(name, samples):
        return {"name": name, "samples": samples}

    on = [
        {
            "name": "signal",
            "data": [2.0, 6.0],
            "modifiers": [{"name": "mu", "type": "normfactor", "data": None}],
        },
        {"name": "qq", "data": [40.0, 20.0], "modifiers": [dict(norm)]},
    ]
    off = [
        {
            "name": "qq",
            "data": [4.0 * off_luminosity, 2.0 * off_luminosity],
            "modifiers": [dict(norm)],
        }
    ]
    channels = [channel("ita_on_sr", on), channel("ita_off_sr", off)]
    totals = {"ita_on_sr": [42.0, 26.0], "ita_off_sr": off[0]["data"]}
    return {
        "channels": channels,
        "observations": [{"name": n, "data": d} for n, d in totals.items()],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def test_projection_scales_off_resonance_data_of_their_own_luminosity():
    """Off-resonance data taken at 10x the ratio project to the same measurement."""
    nominal, more = _on_off_spec(1.0), _on_off_spec(10.0)
    assert resonance_factors(more, 50.0, 5.0) == {"ita_on_sr": 50.0, "ita_off_sr": 5.0}
    a = projection(nominal, 1.0, 1.0, 50.0)
    b = projection(more, 1.0, 1.0, 50.0, resonance_factors(more, 50.0, 5.0))
    assert b.sigma_projected["ita"] == pytest.approx(a.sigma_projected["ita"], rel=1e-9)
    # here, the off-resonance data constrain the continuum better
    assert b.sigma["ita"] < a.sigma["ita"]
    # one factor for both would project the off-resonance data to 10x the ratio
    c = projection(more, 1.0, 1.0, 50.0)
    assert c.sigma_projected["ita"] < 0.99 * a.sigma_projected["ita"]


def test_injection_returns_a_line_of_slope_one():
    spec = with_poi_bounds(_spec(), poi_range(_spec()))
    result = injection(_lh(spec), [0.0, 2.0, 5.0], toys=60, seed=3)
    assert result.failed == 0
    assert abs(result.slope - 1.0) < 3 * result.slope_error
    assert abs(result.intercept) < 3 * result.intercept_error
    # the spread of the fitted mu is the expected sigma (within 25 % for 60 toys)
    assert result.width[1] == pytest.approx(asimov_sigma(_lh(spec), 2.0), rel=0.25)


def test_line_fit_recovers_a_known_line_and_its_errors():
    x = np.array([0.0, 1.0, 3.0, 5.0, 10.0])
    slope, ds, intercept, di, chi2 = line_fit(x, 2.0 * x - 1.0, np.full(5, 0.5))
    assert (slope, intercept, chi2) == pytest.approx((2.0, -1.0, 0.0), abs=1e-12)
    # analytic errors of an unweighted straight-line fit
    sxx = np.sum((x - x.mean()) ** 2)
    assert ds == pytest.approx(0.5 / math.sqrt(sxx))
    assert di == pytest.approx(0.5 * math.sqrt(1 / 5 + x.mean() ** 2 / sxx))


def test_poi_range_keeps_every_bin_positive():
    spec = _spec(signal=(2.0, 5.0, 9.0), background=(60.0, 30.0, 4.5))
    lower, upper = poi_range(spec)
    assert (lower, upper) == (pytest.approx(-0.475), 30.0)
    yields = np.array([60.0, 30.0, 4.5]) + lower * np.array([2.0, 5.0, 9.0])
    # the purest bin keeps 5 % of its background: the edge of the domain, not half-way to it
    assert yields == pytest.approx([59.05, 27.625, 0.225])


_MU = {"name": "mu", "type": "normfactor", "data": None}


def _two_channels():
    """A large channel that sets sigma(mu) and a thin pure one that sets the lower bound.

    The measurement's combined model: the ITA's thousands of background events per bin make
    sigma(mu), the HTA's purest bins (a few background events, S/B ~ 0.3) end the domain.
    """

    def channel(name, signal, background):
        samples = [
            {"name": "signal", "data": signal, "modifiers": [_MU]},
            {"name": "bkg", "data": background, "modifiers": []},
        ]
        return {"name": name, "samples": samples}

    channels = [
        channel("big", [10.0, 10.0], [1000.0, 1000.0]),
        channel("thin", [0.6, 0.6], [2.22, 2.22]),
    ]
    observed = [{"name": "big", "data": [1010.0, 1010.0]}, {"name": "thin", "data": [2.82, 2.82]}]
    return {
        "channels": channels,
        "observations": observed,
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }


def test_the_lower_bound_does_not_clip_the_fitted_mu_at_mu_0():
    """A bound half-way to the domain's edge stopped 9 % of these toys (27 % of the
    measurement config's at stop 55), lifting the mean of the fitted mu at mu = 0 and
    flattening the injection slope (0.952 +- 0.024)."""
    spec = _two_channels()
    lower, _ = poi_range(spec)
    assert lower == pytest.approx(-(1 - KEEP_AT_BOUND) * 2.22 / 0.6)
    lh = _lh(with_poi_bounds(spec, poi_range(spec)))
    assert asimov_sigma(lh, 0.0) == pytest.approx(1.38, abs=0.01)  # the edge is 2.5 sigma away
    x0 = nominal_point(lh, 0.0)
    fits = lh.fit_many(lh.sample(x0, 2000, 3), init=x0)
    assert not fits.failed
    mu = fits.x[:, lh.poi]
    assert np.mean(np.isclose(mu, lower, atol=1e-3)) < 0.02
    assert abs(mu.mean()) < 3 * mu.std() / np.sqrt(len(mu))


def test_a_split_half_with_events_and_no_mc_in_a_channel_counts_them_left_out(tmp_path):
    """A thin half (the default scale's off-resonance control region) is fitted without it."""
    import uproot

    from knunu.fits.catalogue import load_catalogue
    from knunu.fits.validation import SPLIT_LABELS, split_fits

    from . import histfile

    path = tmp_path / "histograms.root"
    histfile.write_histogram_file(path, load_catalogue(), seed=5)
    off_data = 0.0
    with uproot.update(path) as f:
        for half in SPLIT_LABELS:
            for name, samples in (
                ("ita_on", histfile.ITA_SAMPLES),
                ("ita_off", histfile.ITA_OFFRES_SAMPLES),
            ):
                for sample in (*samples, "data"):
                    h = f[f"{name}_{sample}_nominal"].to_hist()
                    if half == "kminus" and name == "ita_off" and sample != "data":
                        h = h * 0.0  # no MC at all in this half's off-resonance channels
                    f[f"{name}_{half}_{sample}_nominal"] = h
                    if half == "kminus" and name == "ita_off" and sample == "data":
                        off_data = float(h.values().sum())  # both channels: every eta row
    pairs = split_fits(path)
    left = {h.split: h.left_out for p in pairs for h in p.halves}
    assert off_data > 0
    assert left.pop("kminus") == pytest.approx(off_data)
    assert set(left.values()) == {0.0}
    assert all(math.isfinite(h.mu) for p in pairs for h in p.halves)


def test_the_signal_region_composition_follows_its_definition(tmp_path):
    """Yields scaled to the target luminosity, S/B, and B Bbar shares by either B's decay."""
    import hist
    import uproot

    from knunu.fits.build import ITA_SAMPLES
    from knunu.fits.catalogue import load_catalogue
    from knunu.fits.validation import composition
    from knunu.simulation.bdecays import MODES

    from . import histfile

    path = tmp_path / "histograms.root"
    histfile.write_histogram_file(path, load_catalogue(), seed=5)
    modes = hist.Hist(
        hist.axis.IntCategory([-1, *MODES], name="mode"),
        hist.axis.Boolean(name="klong"),
        storage=hist.storage.Weight(),
    )
    # (first B's mode, second's, a K_L, weight): D(*) l nu next to D(*) K+ with a K_L; two
    # D(*) l nu (counted once); two other hadronic decays
    for b1, b2, kl, w in ((1, 5, True, 2.0), (1, 1, False, 1.0), (0, 0, False, 1.0)):
        for mode in dict.fromkeys((-1, b1, b2)):
            modes.fill(mode=[mode], klong=[kl], weight=[w])
    with uproot.update(path) as f:
        f["ita_on_modes_charged_nominal"] = modes
        f["ita_on_modes_mixed_nominal"] = modes * 3.0
        h = {s: f[f"ita_on_{s}_nominal"].to_hist().values() for s in ITA_SAMPLES}
    comp = composition(path, 10.0, ITA_SAMPLES)
    for s in ITA_SAMPLES:
        assert comp.yields[s] == pytest.approx(10.0 * h[s].sum())
        assert 0 < comp.effective[s] < np.inf
    background = sum(h[s] for s in ITA_SAMPLES[1:])
    assert comp.scale == 10.0
    assert comp.s_over_b["eta > 0.92"] == pytest.approx(h["signal"].sum() / background.sum())
    top = h["signal"][-1].sum() / background[-1].sum()  # the last eta row, 0.98-1
    assert comp.s_over_b["eta > 0.98"] == pytest.approx(top)
    classes = comp.bbbar_classes
    assert classes["D(*) l nu"][0] == pytest.approx(3 / 4)  # weight 2 + 1 of 4, in each sample
    assert classes["D(*) K+"][0] == pytest.approx(2 / 4)
    assert classes["a K_L in the event"][0] == pytest.approx(2 / 4)
    assert classes["D** l nu"] == (0.0, 0.0)
    # effective events of D(*) l nu: weights 2, 1 (charged) and 6, 3 (mixed): 12^2 / 50
    assert classes["D(*) l nu"][1] == pytest.approx(144 / 50)
    for s in ITA_SAMPLES:  # each sample's yield fractions over (eta rows, q2rec bins)
        np.testing.assert_allclose(comp.shapes[s], h[s] / h[s].sum())


def test_the_published_templates_have_equal_signal_in_each_eta_bin():
    """eta(BDT2) is the signal-efficiency transform: each bin of the published likelihood's ITA
    (0.92-0.94 control row, three signal-region rows) holds 2 % of the produced signal; the
    backgrounds fall towards eta = 1."""
    from knunu.fits.validation import published_shapes

    shapes = published_shapes()
    assert set(shapes) >= {"signal", "charged", "mixed", "ccbar", "ssbar", "uubar", "ddbar"}
    rows = shapes["signal"].sum(axis=1)
    np.testing.assert_allclose(rows, rows.mean(), rtol=0.005)
    for name in ("charged", "mixed", "ccbar", "ssbar", "uubar"):
        rows = shapes[name].sum(axis=1)
        assert np.all(np.diff(rows) < 0), name


def test_the_injection_counts_its_fits_on_the_lower_bound():
    """Half-way to the edge (the bound until stop 56) clips the fitted mu at mu = 0.

    sigma(mu) is 1.38 and the bound -1.75, so a Gaussian would put 10 % of the fits below it.
    """
    spec = _two_channels()
    lower = 0.5 * poi_range(spec)[0] / (1 - KEEP_AT_BOUND)
    inj = injection(_lh(with_poi_bounds(spec, (lower, 30.0))), [0.0, 10.0], toys=300, seed=3)
    assert inj.failed == 0
    assert 0.05 < inj.at_bound[0] / 300 < 0.15
    assert inj.at_bound[1] == 0
