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
