"""Signal spectrum and kinematics: the numbers of the notes and Lorentz invariance."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from knunu.simulation import formfactors, signal
from knunu.simulation import kinematics as kin


def test_sm_spectrum_integral_and_fractions():
    total = signal.branching_fraction()
    assert round(total * 1e6, 2) == 4.97  # the notes' value at its precision
    fractions = [signal.branching_fraction(a, b) / total for a, b in ((0, 4), (4, 8))]
    assert fractions[0] == pytest.approx(0.236, abs=0.002)
    assert fractions[1] == pytest.approx(0.229, abs=0.002)
    assert signal.form_factor(0.0) == pytest.approx(0.332, abs=5e-4)
    assert signal.form_factor(16.0) == pytest.approx(1.08, abs=5e-3)


def test_sampled_q2_follows_the_spectrum():
    q2 = signal.sample_q2(400_000, np.random.default_rng(5))
    assert q2.min() >= 0
    assert q2.max() <= signal.Q2_MAX
    assert np.mean(q2 < 4) == pytest.approx(0.236, abs=0.003)
    assert np.mean(q2 > 8) == pytest.approx(0.535, abs=0.003)


def test_beams_give_the_upsilon4s_and_the_belle2_boost():
    total = kin.beam_four_momenta(kin.ON_RESONANCE.e_her, kin.ON_RESONANCE.e_ler)
    sqrt_s = kin.mass(total)
    assert sqrt_s == pytest.approx(10.58, abs=0.005)
    beta_gamma = np.linalg.norm(total[1:]) / sqrt_s
    assert beta_gamma == pytest.approx(0.287, abs=0.002)
    off = kin.mass(kin.beam_four_momenta(kin.OFF_RESONANCE.e_her, kin.OFF_RESONANCE.e_ler))
    assert sqrt_s - off == pytest.approx(0.06, abs=0.002)
    spread = kin.mass(kin.sample_beams(kin.ON_RESONANCE, 100_000, np.random.default_rng(1)))
    # s ~ 4 E_her E_ler: d(sqrt s)/sqrt s = 1/2 (+) of the relative beam spreads (about 5 MeV)
    b = kin.ON_RESONANCE
    expected = 0.5 * sqrt_s * np.hypot(b.spread_her / b.e_her, b.spread_ler / b.e_ler)
    assert np.std(spread) == pytest.approx(expected, rel=0.02)


def test_boost_round_trip_and_invariant_mass():
    rng = np.random.default_rng(2)
    p3 = rng.normal(0, 1, (1000, 3))
    p4 = np.concatenate([np.sqrt(np.sum(p3**2, axis=1) + 0.1396**2)[:, None], p3], axis=1)
    beta = rng.uniform(-0.5, 0.5, (1000, 3)) / np.sqrt(3)
    there = kin.boost(p4, beta)
    np.testing.assert_allclose(kin.mass(there), 0.1396, rtol=1e-9)
    np.testing.assert_allclose(kin.boost(there, -beta), p4, atol=1e-12)


def test_two_body_decay_conserves_four_momentum():
    rng = np.random.default_rng(3)
    dirs = kin.isotropic_directions(500, rng)
    d1, d2 = kin.two_body(10.58, 5.27934, 5.27934, dirs)
    np.testing.assert_allclose(d1 + d2, np.tile([10.58, 0, 0, 0], (500, 1)), atol=1e-12)
    # B momentum in the CM is about 0.33 GeV at the Upsilon(4S)
    assert np.linalg.norm(d1[0, 1:]) == pytest.approx(0.33, abs=0.02)


def test_signal_events_conserve_and_carry_q2gen(make_events):
    events = make_events("signal", 400, 8)
    parts = events.parts
    total = parts.per_event_sum(parts.p4)
    sqrt_s = kin.mass(events.total)  # made at each event's own sqrt(s)
    np.testing.assert_allclose(kin.mass(total), sqrt_s, rtol=1e-9)
    np.testing.assert_allclose(total[:, 1:], 0.0, atol=1e-9)
    np.testing.assert_allclose(parts.per_event_sum(parts.charge), 0.0, atol=1e-12)
    # the first three particles of each event are K, nu, nubar: (nu + nubar)^2 = q2gen
    first = parts.offsets[:-1]
    nunu = parts.p4[first + 1] + parts.p4[first + 2]
    np.testing.assert_allclose(kin.mass(nunu) ** 2, events.truth["q2gen"], rtol=1e-6, atol=1e-9)
    assert set(np.abs(parts.pdg[first]).tolist()) == {321}
    assert set(events.truth["mcB1Mode"].tolist()) == {13}
    np.testing.assert_array_equal(parts.side[first], 0)


def test_b_direction_follows_sin2():
    c = kin.sample_sin2(200_000, np.random.default_rng(3))
    assert np.mean(c**2) == pytest.approx(0.2, abs=0.003)  # <cos^2> = 1/5 for sin^2


def _fractions(weights: np.ndarray, q2: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fractions of the weighted SM spectrum in q2 bins (q2 a fine grid, equal spacing)."""
    dens = signal.differential_bf(q2) * weights
    return np.histogram(q2, edges, weights=dens)[0] / dens.sum()


def test_form_factor_variations_span_the_fits_covariance():
    """The three eigen-variations reproduce the spread of the q2 spectrum that the fit's f+
    covariance gives (f+ parameters drawn from it), bin by bin and in their correlation; the
    independent variation of HPQCD's BCL coefficients used until stop 45 gave 1.5-3.4x it."""
    q2 = np.linspace(0.0, signal.Q2_MAX, 5001)[:-1]
    edges = np.array([0.0, 4.0, 8.0, 12.0, 16.0, signal.Q2_MAX + 1e-9])
    nominal = _fractions(np.ones_like(q2), q2, edges)
    deltas = np.array(
        [_fractions(signal.form_factor_weight(q2, c, 1.0), q2, edges) - nominal for c in range(3)]
    )
    from_eigen = deltas.T @ deltas

    ff = formfactors.form_factors()
    rng = np.random.default_rng(1)
    draws = rng.multivariate_normal(ff.mean[:3], ff.cov[:3, :3], size=2000)
    x = np.clip(q2, 0.0, signal.Q2_MAX)
    base = formfactors.bsz2015(x, ff.mean)[0] ** 2
    sampled = []
    for a in draws:
        params = ff.mean.copy()
        params[:3] = a
        sampled.append(_fractions(formfactors.bsz2015(x, params)[0] ** 2 / base, q2, edges))
    from_draws = np.cov(np.array(sampled).T)

    sd_eigen, sd_draws = np.sqrt(np.diag(from_eigen)), np.sqrt(np.diag(from_draws))
    assert sd_eigen == pytest.approx(sd_draws, rel=0.12)
    assert 0.01 < sd_eigen[0] / nominal[0] < 0.04  # 2.6 % below 4 GeV^2
    corr = from_eigen / np.outer(sd_eigen, sd_eigen)
    corr_draws = from_draws / np.outer(sd_draws, sd_draws)
    assert corr[0, -1] == pytest.approx(corr_draws[0, -1], abs=0.1)
    assert corr[0, -1] < -0.5  # low and high q2 move against each other


def test_form_factor_variations_keep_the_branching_fraction():
    """Each variation is a shape: the weighted spectrum's area is the nominal's, and up and down
    move the low-q2 fraction in opposite directions."""
    q2 = np.linspace(0.0, signal.Q2_MAX, 20001)
    nominal = np.trapezoid(signal.differential_bf(q2), q2)
    for c in range(3):
        up = signal.form_factor_weight(q2, c, 1.0)
        down = signal.form_factor_weight(q2, c, -1.0)
        for w in (up, down):
            assert np.trapezoid(signal.differential_bf(q2) * w, q2) == pytest.approx(
                nominal, rel=1e-6
            )
        assert (up[100] - 1) * (down[100] - 1) < 0


def test_the_eigen_decomposition_agrees_with_lapack():
    rng = np.random.default_rng(3)
    for n in (2, 3, 6):
        m = rng.normal(size=(n, n))
        m = m @ m.T
        vals, vecs = formfactors.symmetric_eigen(m)
        np.testing.assert_allclose(vals, np.linalg.eigh(m)[0], atol=1e-13 * np.abs(vals).max())
        np.testing.assert_allclose(vecs @ np.diag(vals) @ vecs.T, m, atol=1e-13 * np.abs(m).max())
        np.testing.assert_allclose(vecs.T @ vecs, np.eye(n), atol=1e-14)


_WEIGHTS = """
import numpy as np
from knunu.simulation.signal import form_factor_weight
q2 = np.linspace(0.1, 22.0, 9)
print([form_factor_weight(q2, c, s).tolist() for c in range(3) for s in (1.0, -1.0)])
"""


def test_form_factor_weights_do_not_depend_on_the_blas_kernel():
    # HTCondor starts jobs with a clean environment: OpenBLAS then picks its kernel itself,
    # and LAPACK's eigenvectors (so the weights) differed in the last bits from the local
    # run's, where OPENBLAS_CORETYPE was set
    runs = []
    for coretype in (None, "Prescott", "Haswell"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        out = subprocess.run(
            [sys.executable, "-c", _WEIGHTS], env=env, capture_output=True, text=True, check=True
        )
        runs.append(out.stdout)
    assert runs[0] == runs[1] == runs[2]
