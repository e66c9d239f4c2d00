"""Pythia generation: conservation laws, reproducibility, and the physics of multiplicities."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.simulation.generators import PROCESSES, Generator
from knunu.simulation.kinematics import mass


@pytest.fixture(scope="module")
def samples():
    return {name: Generator(name, seed=11).generate(300) for name in PROCESSES}


def test_charge_and_four_momentum_are_conserved(samples):
    for parts in samples.values():
        assert parts.n_events == 300
        np.testing.assert_array_equal(parts.per_event_sum(parts.charge), 0.0)
        total = parts.per_event_sum(parts.p4)
        np.testing.assert_allclose(total[:, 1:], 0.0, atol=1e-9)
        # e+e- at 10.58 GeV (ISR photons included in the final state); the Upsilon(4S) is
        # made at the collision energy
        np.testing.assert_allclose(mass(total), 10.58, rtol=1e-9)


def test_long_lived_particles_are_left_for_the_detector(samples):
    codes = set(np.abs(np.concatenate([p.pdg for p in samples.values()])).tolist())
    assert {211, 321, 22, 130} <= codes  # pi+-, K+-, photons, K_L
    assert 310 not in codes  # K_S decays (c tau = 27 mm)
    assert 111 not in codes  # pi0 decays


def test_bbbar_events_have_more_tracks_than_continuum(samples):
    def tracks(parts):
        return parts.per_event_sum((parts.charge != 0).astype(np.int64)).mean()

    assert tracks(samples["bbbar"]) > tracks(samples["uubar"]) + 2
    assert tracks(samples["taupair"]) < tracks(samples["uubar"])


def test_same_seed_same_events_other_seed_other_events():
    a = Generator("ccbar", seed=5).generate(50)
    b = Generator("ccbar", seed=5).generate(50)
    c = Generator("ccbar", seed=6).generate(50)
    np.testing.assert_array_equal(a.p4, b.p4)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert a.p4.shape != c.p4.shape or not np.array_equal(a.p4, c.p4)


def test_bad_setting_is_rejected():
    with pytest.raises(ValueError, match="Pythia rejected setting"):
        Generator("uubar", seed=1, extra=("NoSuchSetting:x = 3",))


def test_upsilon_is_made_at_the_event_energy():
    energies = np.array([10.57, 10.58, 10.59])
    parts = Generator("bbbar", seed=3).generate(3, sqrt_s=energies)
    np.testing.assert_allclose(mass(parts.per_event_sum(parts.p4)), energies, rtol=1e-9)
