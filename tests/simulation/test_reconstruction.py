"""ITA reconstruction: q2rec against the generated q2, missing energy, D-suppression mass."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.simulation.detector import DetectorConfig, simulate_detector
from knunu.simulation.generators import Generator
from knunu.simulation.kinematics import ON_RESONANCE
from knunu.simulation.reconstruction import ita_variables


@pytest.fixture(scope="module")
def signal_sample(make_events):
    rng = np.random.default_rng(12)
    events = make_events("signal", 3000, 7)
    seen = simulate_detector(events.parts, ON_RESONANCE, DetectorConfig(), rng, events.total)
    return events, seen, *ita_variables(seen)


def test_q2rec_tracks_q2gen_for_the_signal_kaon(signal_sample):
    events, seen, _, cand = signal_sample
    first = seen.tracks.offsets[:-1]
    has = np.diff(seen.tracks.offsets) > 0
    true_k = events.parts.p4[events.parts.offsets[:-1]]  # generated signal kaon (CM)
    signal_charge = np.sign(events.parts.pdg[events.parts.offsets[:-1]])
    found = has.copy()
    found[has] = (
        np.abs(
            np.linalg.norm(seen.tracks.p4_cm[first[has], 1:], axis=1)
            - np.linalg.norm(true_k[has, 1:], axis=1)
        )
        < 0.1
    )
    found[has] &= seen.tracks.true_pdg[first[has]] == 321 * signal_charge[has]
    assert found.mean() > 0.7  # the signal kaon is usually found
    diff = cand["K_q2rec"][first[found]] - events.truth["q2gen"][found]
    # the B moves with 0.33 GeV in the CM: q2rec smeared by about 1-1.5 GeV^2, unbiased
    assert abs(np.median(diff)) < 0.3
    assert 0.5 < np.std(diff) < 2.5


def test_signal_has_more_missing_energy_than_continuum(signal_sample):
    _, _, sig_event, _ = signal_sample
    rng = np.random.default_rng(13)
    cont = simulate_detector(
        Generator("uubar", seed=8).generate(1500), ON_RESONANCE, DetectorConfig(), rng
    )
    cont_event, _ = ita_variables(cont)
    assert sig_event["E_miss"].mean() > cont_event["E_miss"].mean() + 1.5
    assert cont_event["thrust"].mean() > sig_event["thrust"].mean() + 0.05
    for name, values in cont_event.items():
        assert np.all(np.isfinite(values)), name


def test_kpi_mass_of_a_d0_decay():
    from knunu.simulation.kinematics import boost, isotropic_directions, two_body
    from knunu.simulation.reconstruction import M_D0, M_K, M_PI, _kpi_d0_mass

    rng = np.random.default_rng(1)
    k, pi = two_body(M_D0, M_K, M_PI, isotropic_directions(3, rng))
    beta = np.array([0.3, 0.0, 0.2])
    k, pi = boost(k, beta), boost(pi, beta)
    # event 0: K+ pi- (a D0), event 1: K+ pi+ (same charge), event 2: a lone K
    k4 = np.vstack([k[0], pi[0], k[1], pi[1], k[2]])
    p4 = k4.copy()
    p4[[1, 3], 0] = np.sqrt(np.sum(p4[[1, 3], 1:] ** 2, 1) + M_PI**2)
    offsets = np.array([0, 2, 4, 5])
    charge = np.array([1, -1, 1, 1, 1])
    m = _kpi_d0_mass(offsets, k4, p4, charge)
    assert m[0] == pytest.approx(M_D0, abs=1e-9)
    assert m[2] == 0.0
    assert m[3] == 0.0
    assert m[4] == 0.0
