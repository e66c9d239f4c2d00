"""The pion-sample validations on synthetic histograms: the fits return what was injected."""

from __future__ import annotations

import hist
import numpy as np
import pytest
import uproot

from knunu.errors import InputError
from knunu.fits.pion import closure, read_region, sideband_fit

ETA = [0.0, 0.5, 0.75, 0.92, 1.0]
Q2 = (13, -1.0, 25.0)
SIDEBAND, SIGNAL_REGION = (0.0, 0.92), (0.92, 1.0)
BF = 2.38e-5
MC_WEIGHT = 0.05  # variance = weight x value: MC twenty times the data


def _templates() -> dict[str, np.ndarray]:
    """(eta x q2rec) yields per ``{sample}_{truth}``: D -> K_L events at high q2rec."""
    q2 = np.linspace(0.0, 1.0, Q2[0])
    eta = np.array([1.0, 0.6, 0.35, 0.08])[:, None]
    return {
        "charged_dkl": 900 * eta * (0.2 + q2**2),
        "charged_other": 1500 * eta * (1.2 - 0.5 * q2),
        "mixed_dkl": 500 * eta * (0.2 + q2**2),
        "mixed_other": 900 * eta * (1.0 - 0.3 * q2),
        "ccbar_other": 1200 * eta * np.exp(-2 * q2),
        "uubar_other": 800 * eta * np.exp(-3 * q2),
        "taupair_other": 40 * eta * np.ones_like(q2),
        "pi_k0_other": 60 * np.array([0.05, 0.15, 0.3, 1.0])[:, None] * np.exp(-8 * q2),
        "pi_k0_dkl": np.zeros((4, Q2[0])),
    }


def _hist(values: np.ndarray, variances: np.ndarray) -> hist.Hist:
    h = hist.Hist(
        hist.axis.Variable(ETA, name="eta"),
        hist.axis.Regular(*Q2, name="q2rec"),
        storage=hist.storage.Weight(),
    )
    h.view()["value"] = values
    h.view()["variance"] = variances
    return h


def _write(path, data: np.ndarray, templates: dict[str, np.ndarray]) -> None:
    with uproot.recreate(path) as f:
        for key, v in templates.items():
            f[f"pion_{key}_nominal"] = _hist(v, MC_WEIGHT * v)
        f["pion_data_nominal"] = _hist(data, data)


def _truth(scale_dkl: float, continuum: float, pik0: float) -> np.ndarray:
    t = _templates()
    dkl = sum(v for k, v in t.items() if k.endswith("_dkl") and not k.startswith("pi_k0"))
    other = t["charged_other"] + t["mixed_other"]
    cont = t["ccbar_other"] + t["uubar_other"] + t["taupair_other"]
    return scale_dkl * dkl + other + continuum * cont + pik0 * t["pi_k0_other"]


def test_sideband_fit_finds_the_injected_d_to_kl_scale(tmp_path):
    path = tmp_path / "h.root"
    _write(path, _truth(1.3, 1.4, 1.0), _templates())  # Asimov data
    fit = sideband_fit(path, SIDEBAND, 0.1, 362.0)
    # Asimov data: the fit returns the injected normalisations to the minimiser's precision
    assert fit.d_to_kl_scale == pytest.approx(1.3, abs=1e-6)
    assert fit.continuum == pytest.approx(1.4, abs=1e-6)
    assert fit.bbbar_other == pytest.approx(1.0, abs=1e-6)  # the pi+ K0 events sit in it
    assert 0 < fit.d_to_kl_error < 0.2
    assert fit.projected_error < fit.d_to_kl_error
    assert fit.bins == 3 * Q2[0]
    # the post-fit components add up to the data, summed over eta
    total = np.sum(list(fit.postfit.components.values()), axis=0)
    np.testing.assert_allclose(total, fit.postfit.data, rtol=0.02)

    # Poisson data: the scale within its error, and a nominal sample gives 1
    data = np.random.default_rng(5).poisson(_truth(1.3, 1.4, 1.0)).astype(float)
    _write(path, data, _templates())
    fit = sideband_fit(path, SIDEBAND, 0.1, 362.0)
    assert abs(fit.d_to_kl_scale - 1.3) < 3 * fit.d_to_kl_error
    _write(path, _truth(1.0, 1.0, 1.0), _templates())
    assert sideband_fit(path, SIDEBAND, 0.1, 362.0).d_to_kl_scale == pytest.approx(1.0, abs=1e-6)


def test_closure_returns_the_injected_branching_fraction(tmp_path):
    path = tmp_path / "h.root"
    _write(path, _truth(1.3, 1.0, 2.0), _templates())  # twice the generated BF, Asimov
    fit = closure(path, SIGNAL_REGION, 1.3, BF, 0.1, 0.4)
    assert fit.bf == pytest.approx(2 * BF, rel=1e-6)
    assert fit.bf_generated == BF
    assert 0 < fit.expected_error < BF
    # four times the luminosity: about half the error (the background norms are constrained)
    assert 0.4 < fit.projected_error / fit.expected_error < 0.6
    assert fit.signal_expected == pytest.approx(_templates()["pi_k0_other"][3].sum())
    assert not fit.at_bound


def test_missing_pion_histograms_are_a_clear_error(tmp_path):
    path = tmp_path / "h.root"
    with uproot.recreate(path) as f:
        f["ita_on_signal_nominal"] = _hist(np.ones((4, Q2[0])), np.ones((4, Q2[0])))
    with pytest.raises(InputError, match="no pion-candidate histograms"):
        read_region(path, SIDEBAND)
    _write(path, _truth(1.0, 1.0, 1.0), _templates())
    with pytest.raises(InputError, match=r"\(pion_lepton_data_nominal\)"):
        read_region(path, SIDEBAND, "pion_lepton")
    with pytest.raises(InputError, match="no eta"):
        read_region(path, (0.3, 0.4))
