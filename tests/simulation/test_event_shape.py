"""Event shapes: exact values on constructed events, and continuum versus BBbar from Pythia."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.simulation import event_shape as es
from knunu.simulation.generators import Generator


def test_back_to_back_and_isotropic_limits():
    two_jet = np.array([[[0, 0, 5.0], [0, 0, -5.0], [0, 0, 0]]])
    t, axis = es.thrust(two_jet)
    assert t[0] == pytest.approx(1.0)
    assert abs(axis[0, 2]) == pytest.approx(1.0)
    h = es.fox_wolfram(two_jet)
    assert h[0, 2] / h[0, 0] == pytest.approx(1.0)
    assert es.sphericity(two_jet)[0] == pytest.approx(0.0, abs=1e-12)
    # six particles along +-x, +-y, +-z: isotropic momentum tensor
    iso = np.array([[[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]])
    assert es.sphericity(iso)[0] == pytest.approx(1.0)
    assert es.fox_wolfram(iso)[0, 2] == pytest.approx(0.0, abs=1e-12)
    assert es.thrust(iso)[0][0] == pytest.approx(1 / 3)


def _brute_force_thrust(p: np.ndarray) -> np.ndarray:
    # the thrust axis is along the sum of some subset of momenta (the others reversed)
    m = p.shape[1]
    best = np.zeros(len(p))
    for mask in range(1, 2**m, 2):
        signs = np.array([1.0 if mask >> k & 1 else -1.0 for k in range(m)])
        axis = np.einsum("i,eij->ej", signs, p)
        norm = np.linalg.norm(axis, axis=1)
        axis /= np.where(norm > 0, norm, 1.0)[:, None]
        val = np.abs(np.einsum("eij,ej->ei", p, axis)).sum(1) / np.linalg.norm(p, axis=-1).sum(1)
        best = np.maximum(best, val)
    return best


def test_thrust_against_brute_force_on_bbbar_tracks():
    parts = Generator("bbbar", seed=2).generate(300)
    p = es.pad(parts.offsets, parts.p4[:, 1:], parts.charge != 0)
    p = p[(np.linalg.norm(p, axis=-1) > 0).sum(1) <= 10][:, :10]
    t, _ = es.thrust(p)
    exact = _brute_force_thrust(p)
    assert np.all(t <= exact + 1e-12)
    assert np.mean(np.abs(t - exact) > 1e-9) < 0.03  # measured 1.3 %
    assert np.max(exact - t) < 0.03
    assert np.mean(exact - t) < 1e-3


def test_pad_and_cones_conserve_momentum_flow():
    offsets = np.array([0, 2, 5])
    p3 = np.arange(15.0).reshape(5, 3)
    padded = es.pad(offsets, p3)
    assert padded.shape == (2, 3, 3)
    np.testing.assert_array_equal(padded[1], p3[2:5])
    np.testing.assert_array_equal(padded[0, 2], 0.0)
    cones = es.cleo_cones(padded, np.array([[0, 0, 1.0], [1.0, 0, 0]]))
    np.testing.assert_allclose(cones.sum(1), np.linalg.norm(padded, axis=-1).sum(1))


def test_continuum_is_jet_like_and_bbbar_spherical():
    shapes = {}
    for name in ("uubar", "ccbar", "bbbar"):
        parts = Generator(name, seed=21).generate(400)
        p = es.pad(parts.offsets, parts.p4[:, 1:])
        t, _ = es.thrust(p)
        h = es.fox_wolfram(p)
        shapes[name] = (t.mean(), (h[:, 2] / h[:, 0]).mean())
    # particle level, all final-state particles: uds 0.84, cc 0.82, BBbar 0.68
    assert shapes["uubar"][0] > 0.8
    assert shapes["bbbar"][0] < 0.72
    assert shapes["ccbar"][0] > shapes["bbbar"][0] + 0.05
    assert shapes["uubar"][1] > shapes["bbbar"][1] + 0.2


def _legendre(c: float) -> np.ndarray:
    return np.array(
        [1, c, 1.5 * c**2 - 0.5, c * (2.5 * c**2 - 1.5), 4.375 * c**4 - 3.75 * c**2 + 0.375]
    )


def _signal_side_by_definition(tracks, charges, clusters, e_cand, sqrt_s):
    """KSFW moments and the ROE thrust of each track, written out from their definitions."""
    missing = -(tracks.sum(0) + clusters.sum(0))
    rows = []
    for s in range(len(tracks)):
        norm = 2 * (sqrt_s - e_cand[s])
        roe = [(tracks[j], charges[j], 0) for j in range(len(tracks)) if j != s]
        roe += [(c, 0.0, 1) for c in clusters]
        hso = np.zeros((3, 5))
        ps = tracks[s]
        for p, q, kind in [*roe, (missing, 0.0, 2)]:
            leg = _legendre(ps @ p / np.linalg.norm(ps) / np.linalg.norm(p))
            for k in range(5):
                if k % 2 == 0:
                    hso[kind, k] += np.linalg.norm(p) * leg[k]
                elif kind == 0:
                    hso[kind, k] += charges[s] * q * np.linalg.norm(p) * leg[k]
        others = [*roe, (missing, 0.0, 2)]
        hoo = np.zeros(5)
        for i in range(len(others)):
            for j in range(i):
                (pi, qi, _), (pj, qj, _) = others[i], others[j]
                w = np.linalg.norm(pi) * np.linalg.norm(pj)
                leg = _legendre(pi @ pj / w)
                hoo += [w * leg[k] * (qi * qj if k % 2 else 1.0) for k in range(5)]
        roe_p = np.array([p for p, _, _ in roe])
        t = _brute_force_thrust(roe_p[None])[0]
        rows.append(
            {
                "thrustOm": t,
                **{f"hso0{k}": hso[0, k] / norm for k in range(5)},
                **{f"hso{x}{k}": hso[x, k] / norm for x in (1, 2) for k in (0, 2, 4)},
                **{f"hoo{k}": hoo[k] / norm**2 for k in range(5)},
            }
        )
    return rows


def test_signal_side_moments_match_their_definition():
    rng = np.random.default_rng(21)
    n_t, n_c = 5, 3
    tracks = rng.normal(0, 1.0, (n_t, 3))
    clusters = rng.normal(0, 0.5, (n_c, 3))
    charges = rng.choice([-1.0, 1.0], n_t)
    e_cand = np.sqrt(np.sum(tracks**2, 1) + 0.4937**2)
    got = es.signal_side(
        np.array([0, n_t]),
        tracks,
        charges,
        np.array([0, n_c]),
        clusters,
        -(tracks.sum(0) + clusters.sum(0))[None],
        e_cand,
        np.array([10.58]),
    )
    want = _signal_side_by_definition(tracks, charges, clusters, e_cand, 10.58)
    for s in range(n_t):
        for name, value in want[s].items():
            # the ROE thrust is iterated from 3 seeds: a local maximum, never above the exact one
            tol = 0.02 if name == "thrustOm" else 1e-6  # stored as float32
            assert got[name][s] == pytest.approx(value, abs=tol), (s, name)
            if name == "thrustOm":
                assert got[name][s] <= value + 1e-6  # float32
        assert 0.0 <= got["cosTBTO"][s] <= 1.0


def test_kaon_aligns_with_the_roe_in_continuum_not_in_signal(make_events):
    """The angle between the kaon and the ROE thrust axis: flat for B decays, near 1 in jets."""
    from knunu.simulation.detector import DetectorConfig, simulate_detector
    from knunu.simulation.kinematics import ON_RESONANCE
    from knunu.simulation.reconstruction import ita_variables

    rng = np.random.default_rng(3)
    sig = make_events("signal", 2000, 5)
    seen = simulate_detector(sig.parts, ON_RESONANCE, DetectorConfig(), rng, sig.total)
    _, cand = ita_variables(seen)
    kaon = np.abs(seen.tracks.true_pdg) == 321
    fast = cand["K_pstar"] > 1.5  # the signal kaon is the hard one
    signal_cos = cand["K_cosTBTO"][kaon & fast]
    cont = simulate_detector(
        Generator("uubar", seed=9).generate(3000), ON_RESONANCE, DetectorConfig(), rng
    )
    _, c_cand = ita_variables(cont)
    c_fast = c_cand["K_pstar"] > 1.5
    cont_cos = c_cand["K_cosTBTO"][c_fast]
    assert np.mean(signal_cos) == pytest.approx(0.5, abs=0.06)  # flat in |cos|
    assert np.mean(cont_cos) > 0.75
