"""Signal spectra of the reinterpretation: EOS's rate, the null, the new-particle weights."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.reinterpret import spectra
from knunu.reinterpret.maps import Q2_EDGES
from knunu.simulation import signal


def _integral(lo: float, hi: float, const: spectra.Constants, params: np.ndarray) -> float:
    edges = np.linspace(lo, hi, 401)
    nodes, weights = spectra._gauss(edges)
    dens = spectra.wet_densities(nodes.ravel(), params, const).reshape(3, *nodes.shape)
    return float((dens[0] * weights).sum())


@pytest.mark.parametrize(
    ("lo", "hi", "reference"),
    [(0.0, 8.0, 2.05845e-6), (8.0, 16.0, 1.68211e-6), (16.0, 22.9, 0.59978e-6)],
)
def test_the_vector_rate_reproduces_eos_unit_test(lo, hi, reference):
    # eos/rare-b-decays/b-to-k-nu-nu_TEST.cc (v1.0.17): |V_tb| = 1, |V_ts| = 0.04,
    # m_B = 5.2796, m_K = 0.49368 GeV, BSZ2015 f+ alphas below, SM C_VL
    const = spectra.EOS._replace(v_tb_ts=0.04, m_b_meson=5.2796, m_k=0.49368)
    params = np.array([3.2909e-01, -8.6695e-01, 6.0957e-03, 0, 0, 0, 0, 0])
    assert _integral(lo, hi, const, params) == pytest.approx(reference, rel=1e-4)


def test_the_knunu_null_is_the_simulated_spectrum():
    null = spectra.null_integrals(spectra.NULLS["knunu"])
    assert null[0] == 0.0  # the bin below 0
    for j in (1, 37, 99):
        lo, hi = Q2_EDGES[j], Q2_EDGES[j + 1]
        assert null[j] == pytest.approx(signal.branching_fraction(lo, hi), rel=1e-9, abs=0)
    # the last bin runs to the kinematic endpoint (22.904 GeV^2), where the maps count it
    last = signal.branching_fraction(Q2_EDGES[100], signal.Q2_MAX)
    assert null[100] == pytest.approx(last, rel=1e-4, abs=0)  # Gauss at the endpoint
    assert null.sum() == pytest.approx(signal.branching_fraction(), rel=1e-9, abs=0)


def test_the_sm_point_of_eos_is_three_percent_below_the_belle2_null():
    # different constants (alpha_e = 1/133 vs 1/127.952, V_ts) and form factors (BSZ2015 fit
    # vs HPQCD 2022): arXiv:2507.12393's weights at the SM point, 0.91-1.06 per bin
    null = spectra.NULLS["belle2"]
    n = spectra.null_integrals(null)
    w = spectra.wet_weights(null)
    assert np.sum(w[0] * n) / np.sum(n) == pytest.approx(0.969, abs=0.001)
    assert 0.90 < w[0, 1:].min() < w[0, 1:].max() < 1.07
    assert w[0, 0] == 1.0
    assert w[1, 0] == 0.0
    assert w[2, 0] == 0.0


def test_scalar_and_tensor_vanish_at_zero_q2_and_the_vector_does_not():
    dens = spectra.wet_densities(np.array([0.0, 5.0]), spectra.form_factors().mean)
    assert dens[0, 0] > 0
    assert dens[1, 0] == 0
    assert dens[2, 0] == 0
    assert np.all(dens[:, 1] > 0)


@pytest.mark.parametrize("m_x", [0.0, 1.0, 2.1, 2.117, 4.6])
def test_a_new_particle_has_its_branching_fraction_in_the_map(m_x):
    null = spectra.NULLS["knunu"]
    w = spectra.x_weights(m_x, null)
    # weights x null rate = the particle's B spread over at most two neighbouring bins
    bf = w * spectra.null_integrals(null)
    assert bf.sum() == pytest.approx(spectra.BF_UNIT, rel=1e-12, abs=0)
    hit = np.flatnonzero(bf)
    assert 1 <= len(hit) <= 2
    assert hit[-1] - hit[0] <= 1
    assert Q2_EDGES[hit[0]] - 0.23 <= m_x**2 <= Q2_EDGES[hit[-1] + 1] + 0.23


def test_a_particle_outside_phase_space_is_refused():
    with pytest.raises(ValueError, match="outside"):
        spectra.x_weights(4.8, spectra.NULLS["knunu"])
