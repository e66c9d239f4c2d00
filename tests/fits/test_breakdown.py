"""What an expected sigma(mu) is made of (knunu.fits.breakdown)."""

from __future__ import annotations

import math

import numpy as np
import pyhf
import pytest

from knunu.fits.breakdown import OTHER, breakdown, group_of
from knunu.fits.infer import Likelihood

S, B, DELTA, MC = 50.0, 400.0, 0.2, 0.05
MU = {"name": "mu", "type": "normfactor", "data": None}


def _lh(staterror: bool = True, extra: bool = False) -> tuple[Likelihood, np.ndarray]:
    """One bin, signal S x mu, background B with a normsys DELTA and an MC error MC x B."""
    modifiers = [
        {"name": "mu_bkg_x", "type": "normsys", "data": {"hi": 1 + DELTA, "lo": 1 / (1 + DELTA)}}
    ]
    if staterror:
        modifiers.append({"name": "staterror_sr_x", "type": "staterror", "data": [MC * B]})
    if extra:  # a parameter no group claims, on the signal
        signal_mods = [{"name": "brand_new", "type": "normsys", "data": {"hi": 1.1, "lo": 1 / 1.1}}]
    else:
        signal_mods = []
    spec = {
        "channels": [
            {
                "name": "sr",
                "samples": [
                    {
                        "name": "signal",
                        "data": [S],
                        "modifiers": [MU, *signal_mods],
                    },
                    {"name": "x", "data": [B], "modifiers": modifiers},
                ],
            }
        ],
        "observations": [{"name": "sr", "data": [S + B]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    lh = Likelihood.from_workspace(pyhf.Workspace(spec))
    x = lh.init.copy()
    x[lh.poi] = 1.0
    return lh.with_data(lh.expected_data(x)), x


def test_one_bin_shares_are_the_analytic_ones():
    lh, x = _lh()
    parts = breakdown(lh, x)
    # Asimov, one bin: sigma^2 = (S + B)/S^2 + (B ln(1 + DELTA)/S)^2 + (MC B/S)^2 (pyhf's
    # normsys is exponential in the parameter for hi = 1 / lo, staterror a Gaussian of width MC)
    stat = math.sqrt(S + B) / S
    norm = B * math.log(1 + DELTA) / S
    mc = MC * B / S
    assert parts.stat == pytest.approx(stat, rel=1e-6)
    assert parts.sigma == pytest.approx(math.sqrt(stat**2 + norm**2 + mc**2), rel=1e-6)
    shares = {s.group: s for s in parts.shares}
    assert shares["background normalisations"].share == pytest.approx(norm, rel=1e-6)
    assert shares["MC statistics, B Bbar and signal"].share == pytest.approx(mc, rel=1e-6)
    # and the total is the Hesse error of the Asimov fit
    best = lh.fit()
    assert parts.sigma == pytest.approx(lh.uncertainties(best).error[lh.poi], rel=1e-4)


def test_without_the_mc_error_its_share_is_gone_and_the_rest_is_other():
    lh, x = _lh(staterror=False, extra=True)
    parts = breakdown(lh, x)
    groups = [s.group for s in parts.shares]
    assert "MC statistics, B Bbar and signal" not in groups
    assert OTHER in groups  # an unknown parameter is not silently dropped
    # a 10 % signal normalisation: sigma^2 gains (mu x 0.1 / 1)^2 ~ (ln 1.1)^2 at mu = 1
    other = {s.group: s for s in parts.shares}[OTHER]
    assert other.share == pytest.approx(math.log(1.1), rel=1e-6)


def test_every_systematic_of_the_catalogue_has_a_group():
    from knunu.fits.catalogue import load_catalogue

    names = {row.name for row in load_catalogue()}
    for analysis in ("ita", "hta"):  # as the combination renames the uncorrelated ones
        assert {n for n in names if group_of(f"{analysis}_{n}") == OTHER} == set()


def test_groups_are_matched_in_order():
    assert group_of("staterror_ita_on_sr_uubar[3]") == "MC statistics, continuum"
    assert group_of("staterror_ita_on_sr_charged[3]") == "MC statistics, B Bbar and signal"
    assert group_of("hta_norm_bbbar") == "background normalisations"
    assert group_of("ita_factorisation") == "factorised template shapes"
    # the factorised templates' MC statistics (principal components of their replicas)
    assert group_of("ita_mcstat_off_ssbar_3") == "MC statistics, continuum"
    assert group_of("ita_mcstat_on_charged_0") == "MC statistics, B Bbar and signal"
    assert np.all([group_of(g) != OTHER for g in ("ita_kl_efficiency", "hta_extra_energy")])


def test_mu_without_curvature_is_a_typed_error():
    from knunu.errors import FitError

    lh, x = _lh()
    with pytest.raises(FitError, match="mu is fixed"):
        breakdown(lh, x, fixed=(lh.poi,))
