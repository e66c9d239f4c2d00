"""ITA reconstruction: q2rec against the generated q2, missing energy, D-suppression mass,
the ROE vertex."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.simulation.detector import DetectorConfig, Tracks, simulate_detector
from knunu.simulation.generators import Generator
from knunu.simulation.kinematics import ON_RESONANCE, mass
from knunu.simulation.reconstruction import ita_variables, roe_vertex


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


def test_event_sums_and_roe_take_every_track_as_a_pion(signal_sample):
    """basf2's lists: event energy and ROE use the pion mass, not the (unknown) true one."""
    from knunu.simulation.generators import per_event_sum
    from knunu.simulation.reconstruction import M_PI, track_p4

    _, seen, event, cand = signal_sample
    pi_cm = track_p4(seen, M_PI)[1]
    e_pion = per_event_sum(seen.tracks.offsets, pi_cm[:, 0])
    e_clusters = per_event_sum(seen.clusters.offsets, seen.clusters.p4_cm[:, 0])
    np.testing.assert_allclose(event["E_tot"], e_pion + e_clusters, rtol=1e-12)
    # per track: kaons and protons lose energy under the pion mass, electrons and muons gain
    true_mass = np.sqrt(np.clip(mass(seen.tracks.p4_lab) ** 2, 0.0, None))
    moved = np.sign(pi_cm[:, 0] - seen.tracks.p4_cm[:, 0])
    far = np.abs(true_mass - M_PI) > 0.01
    np.testing.assert_array_equal(moved[far], np.sign(M_PI - true_mass[far]))
    assert np.any(moved[far] < 0)
    assert np.any(moved[far] > 0)
    # the ROE of a candidate: everything else, its tracks as pions
    event_of = np.repeat(np.arange(len(e_pion)), np.diff(seen.tracks.offsets))
    roe_e = cand["K_roe_deltaE"] + seen.sqrt_s[event_of] / 2
    np.testing.assert_allclose(roe_e, (e_pion + e_clusters)[event_of] - pi_cm[:, 0], atol=1e-9)


def _tracks(dz_um, dr_um, dz_err_um=20.0, dr_err_um=15.0) -> Tracks:
    n = len(dz_um)
    cm = 1e-4
    return Tracks(
        offsets=np.array([0, n]),
        p4_lab=np.zeros((n, 4)),
        p4_cm=np.zeros((n, 4)),
        charge=np.ones(n, np.int8),
        true_pdg=np.full(n, 211),
        kaon_id=np.zeros(n),
        lepton_id=np.zeros(n),
        dr=np.asarray(dr_um) * cm,
        dz=np.asarray(dz_um) * cm,
        dr_err=np.full(n, dr_err_um * cm),
        dz_err=np.full(n, dz_err_um * cm),
        side=np.full(n, -1, np.int8),
    )


def test_roe_vertex_follows_its_definition():
    """Three tracks at z = 0, 0, 100 um (errors 20 um), one displaced 3 mm from the beam."""
    got = roe_vertex(_tracks([0.0, 0.0, 100.0, 500.0], [0.0, 15.0, 30.0, 3000.0]))
    dz, chi2 = got["K_roe_dz"] * 1e4, got["K_roe_vtxChi2"]
    # dr pulls about the beam spot's centre: errors 15 um (+) the beam spot's 10 um
    pull2 = np.array([0.0, 15.0, 30.0]) ** 2 / (15.0**2 + 10.0**2)
    # the third track as the candidate: the ROE vertex is at 0 (the displaced one is out)
    assert dz[2] == pytest.approx(100.0)
    assert chi2[2] == pytest.approx((pull2[0] + pull2[1]) / 3)  # z pulls 0; ndf 3
    # the first: the ROE is the tracks at 0 and 100 um: vertex at 50 um, z pulls 2.5 each
    assert dz[0] == pytest.approx(-50.0)
    assert chi2[0] == pytest.approx((2 * 2.5**2 + pull2[1] + pull2[2]) / 3)
    # the displaced one as the candidate (it fails the cut itself): all three are its ROE
    z_roe = 100.0 / 3
    z_chi2 = (2 * z_roe**2 + (100.0 - z_roe) ** 2) / 20.0**2
    assert dz[3] == pytest.approx(500.0 - z_roe)
    assert chi2[3] == pytest.approx((z_chi2 + pull2.sum()) / 5)
    # a lone track has no ROE vertex
    alone = roe_vertex(_tracks([40.0], [10.0]))
    assert alone["K_roe_dz"][0] == 0.0
    assert alone["K_roe_vtxChi2"][0] == 0.0


def test_kaons_in_b_events_sit_away_from_the_roe_vertex(signal_sample, make_events):
    """Signal kaons come from one B, the ROE from the other, about 0.13 mm apart along the
    boost; continuum kaons and their ROE come from one collision point."""
    _, seen, _, cand = signal_sample
    first = seen.tracks.offsets[:-1][np.diff(seen.tracks.offsets) > 0]
    rng = np.random.default_rng(4)
    made = Generator("uubar", seed=4).generate(3000)
    uubar = simulate_detector(made, ON_RESONANCE, DetectorConfig(), rng)
    kaon = uubar.tracks.kaon_id > 0.9
    cont = ita_variables(uubar)[1]
    signal_dz = np.median(np.abs(cand["K_roe_dz"][first])) * 1e4
    continuum_dz = np.median(np.abs(cont["K_roe_dz"][kaon])) * 1e4
    # B+ c tau = 491 um at beta gamma 0.29: |Delta z| of two B decays has median 98 um;
    # resolution and the ROE's D decays add a little (114 um here; 167 when the library's B
    # flew twice)
    assert 90 < signal_dz < 150
    assert continuum_dz < 0.6 * signal_dz
