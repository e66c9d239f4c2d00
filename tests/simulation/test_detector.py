"""Detector response: acceptance, resolution, particle ID rates, invisibles, reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from knunu.simulation import detector as det
from knunu.simulation.generators import Generator, Particles
from knunu.simulation.kinematics import ON_RESONANCE, boost, mass


@pytest.fixture(scope="module")
def ccbar():
    return Generator("ccbar", seed=31).generate(1500)


def _single_particles(pdg: int, n: int, p: float, rng) -> Particles:
    cos_t = rng.uniform(-0.5, 0.8, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    sin_t = np.sqrt(1 - cos_t**2)
    p3 = p * np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)
    m = {321: 0.493677, 211: 0.13957, 11: 0.000511, 13: 0.105658, 22: 0.0, 130: 0.497611, 12: 0.0}
    m |= {2112: det.M_NEUTRON, 2212: 0.938272}
    p4 = np.concatenate([np.sqrt(p**2 + m[abs(pdg)] ** 2) * np.ones((n, 1)), p3], axis=1)
    charge = np.full(n, {321: 1.0, 211: 1.0, 11: -1.0, 13: -1.0}.get(pdg, 0.0))
    return Particles(np.arange(n + 1), np.full(n, pdg, np.int32), p4, charge)


def _expected_rate(tracks, at_pivot: float, slope: float, lo: float, hi: float) -> float:
    """The ID rate the configuration defines, averaged over the tracks' lab momenta."""
    p_lab = np.linalg.norm(tracks.p4_lab[:, 1:], axis=1)
    return float(np.mean(np.clip(at_pivot + slope * (p_lab - 1.5), lo, hi)))


def test_kaon_id_efficiency_and_pion_misid():
    rng = np.random.default_rng(1)
    cfg = det.DetectorConfig(beam_photons_mean=0.0)
    assert cfg.kaon_id_pivot_gev == 1.5
    for p_cm, n in ((1.5, 100_000), (0.7, 50_000), (3.0, 50_000)):
        kaons = det.simulate_detector(_single_particles(321, n, p_cm, rng), ON_RESONANCE, cfg, rng)
        pions = det.simulate_detector(
            _single_particles(211, 2 * n, p_cm, rng), ON_RESONANCE, cfg, rng
        )
        eff = np.mean(kaons.tracks.kaon_id > det.KAON_ID_CUT)
        misid = np.mean(pions.tracks.kaon_id > det.KAON_ID_CUT)
        # the definition: 68 % and 1.2 % at 1.5 GeV lab momentum, linear in lab momentum
        assert eff == pytest.approx(
            _expected_rate(kaons.tracks, 0.68, -0.06, 0.05, 0.99), abs=0.006
        )
        assert misid == pytest.approx(
            _expected_rate(pions.tracks, 0.012, 0.004, 0.001, 0.2), abs=0.0012
        )
        assert np.all((kaons.tracks.kaon_id >= 0) & (kaons.tracks.kaon_id <= 1))
        if p_cm == 1.5:
            # 1.5 GeV in the CM is ~1.7 GeV in the lab on average: close to the nominal rates
            assert eff == pytest.approx(0.68, abs=0.015)
            assert misid == pytest.approx(0.012, abs=0.0015)
        if p_cm == 0.7:
            soft = (eff, misid)
    # momentum dependent: efficiency falls and mis-ID rises with momentum
    assert soft[0] > eff + 0.08
    assert soft[1] < 0.012 < misid


def test_tracks_respect_acceptance_and_resolution(ccbar):
    rng = np.random.default_rng(2)
    cfg = det.DetectorConfig()
    seen = det.simulate_detector(ccbar, ON_RESONANCE, cfg, rng)
    p4 = seen.tracks.p4_lab
    theta = np.degrees(np.arctan2(np.hypot(p4[:, 1], p4[:, 2]), p4[:, 3]))
    assert theta.min() > 16.0  # resolution may move a track a hair, never far
    assert theta.max() < 151.0
    assert set(np.unique(np.abs(seen.tracks.true_pdg))) <= {11, 13, 211, 321, 2212}
    # the CM boost back to the lab: sqrt(s) of the beams is the Upsilon(4S)
    assert np.mean(seen.sqrt_s) == pytest.approx(10.58, abs=0.002)
    # resolution: 1.5 GeV kaons measured with sigma(pT)/pT ~ 0.3 %
    rng = np.random.default_rng(3)
    kaons = det.simulate_detector(_single_particles(321, 20_000, 1.5, rng), ON_RESONANCE, cfg, rng)
    p_cm = np.linalg.norm(kaons.tracks.p4_cm[:, 1:], axis=1)
    assert np.std(p_cm) / 1.5 == pytest.approx(0.003, abs=0.001)
    np.testing.assert_allclose(mass(kaons.tracks.p4_cm), 0.493677, rtol=1e-6)


def test_neutrinos_are_invisible_and_kl_partially_seen():
    rng = np.random.default_rng(4)
    cfg = det.DetectorConfig(beam_photons_mean=0.0)
    nus = det.simulate_detector(_single_particles(12, 1000, 2.0, rng), ON_RESONANCE, cfg, rng)
    assert len(nus.tracks.charge) == 0
    assert len(nus.clusters.origin) == 0
    kls = det.simulate_detector(_single_particles(130, 20_000, 2.0, rng), ON_RESONANCE, cfg, rng)
    seen = kls.clusters.origin == det.KLONG
    assert np.mean(np.diff(kls.clusters.offsets) > 0) == pytest.approx(0.5, abs=0.02)
    # a K_L deposits only part of its kinetic energy
    assert np.all(kls.clusters.p4_lab[seen, 0] < 2.1)


def test_kl_efficiency_and_hadronic_scale_are_switches():
    rng = np.random.default_rng(5)
    parts = _single_particles(130, 20_000, 2.0, rng)
    nominal = det.DetectorConfig(beam_photons_mean=0.0)
    nature = dataclasses.replace(nominal, kl_ecl_efficiency=0.5 * 0.83, hadronic_energy_scale=0.9)
    a = det.simulate_detector(parts, ON_RESONANCE, nominal, np.random.default_rng(6))
    b = det.simulate_detector(parts, ON_RESONANCE, nature, np.random.default_rng(6))
    assert len(b.clusters.origin) / len(a.clusters.origin) == pytest.approx(0.83, abs=0.03)
    assert b.clusters.p4_lab[:, 0].mean() / a.clusters.p4_lab[:, 0].mean() == pytest.approx(
        0.9, abs=0.03
    )


def test_same_seed_same_response(ccbar):
    cfg = det.DetectorConfig()
    a = det.simulate_detector(ccbar, ON_RESONANCE, cfg, np.random.default_rng(9))
    b = det.simulate_detector(ccbar, ON_RESONANCE, cfg, np.random.default_rng(9))
    np.testing.assert_array_equal(a.tracks.p4_lab, b.tracks.p4_lab)
    np.testing.assert_array_equal(a.clusters.p4_cm, b.clusters.p4_cm)
    np.testing.assert_array_equal(a.tracks.offsets, b.tracks.offsets)


def test_lepton_id_efficiency_and_misid():
    rng = np.random.default_rng(3)
    cfg = det.DetectorConfig(beam_photons_mean=0.0)
    rates = {}
    for pdg in (11, 13, 211, 321):
        seen = det.simulate_detector(
            _single_particles(pdg, 40_000, 1.5, rng), ON_RESONANCE, cfg, rng
        )
        lid = seen.tracks.lepton_id
        assert np.all((lid >= 0) & (lid <= 1))
        rates[pdg] = np.mean(lid > det.LEPTON_ID_CUT)
    assert rates[11] == pytest.approx(cfg.lepton_efficiency, abs=0.01)
    assert rates[13] == pytest.approx(cfg.lepton_efficiency, abs=0.01)
    assert rates[211] == pytest.approx(cfg.lepton_misid, abs=0.0015)
    assert rates[321] == pytest.approx(cfg.lepton_misid, abs=0.0015)
    # below the momentum threshold a lepton is identified only at the mis-ID rate
    soft = det.simulate_detector(_single_particles(13, 20_000, 0.25, rng), ON_RESONANCE, cfg, rng)
    slow = np.linalg.norm(soft.tracks.p4_lab[:, 1:], axis=1) < 0.35
    assert np.mean(soft.tracks.lepton_id[slow] > det.LEPTON_ID_CUT) < 0.02


def test_antineutrons_annihilate_and_neutrons_rarely_interact():
    """An antineutron is seen more often than a neutron and deposits part of 2 m_n + T."""
    rng = np.random.default_rng(8)
    cfg = det.DetectorConfig(beam_photons_mean=0.0, splitoff_probability=0.0)
    p = 0.6  # GeV in the CM frame
    anti = _single_particles(-2112, 20_000, p, rng)
    nbar = det.simulate_detector(anti, ON_RESONANCE, cfg, rng)
    n = det.simulate_detector(_single_particles(2112, 20_000, p, rng), ON_RESONANCE, cfg, rng)
    assert np.all(nbar.clusters.origin == det.ANTINEUTRON)
    assert np.all(n.clusters.origin == det.NEUTRON)
    # every generated direction is inside the ECL: the cluster rate is the efficiency
    eff = len(nbar.clusters.origin) / 20_000
    assert eff == pytest.approx(cfg.antineutron_ecl_efficiency, abs=0.02)
    assert len(n.clusters.origin) / 20_000 < 0.1
    # the annihilation energy 2 m_n + T (lab), not the kinetic energy, sets the deposit
    seen = np.diff(nbar.clusters.offsets) > 0
    released = boost(anti.p4, nbar.beta_cm)[seen, 0] + det.M_NEUTRON
    ratio = nbar.clusters.p4_lab[:, 0] / released
    lo, hi = cfg.antineutron_energy_fraction
    assert np.mean(ratio) == pytest.approx((lo + hi) / 2, abs=0.005)
    assert np.quantile(ratio, 0.01) > 0.9 * lo
    assert np.quantile(ratio, 0.99) < 1.1 * hi
    assert np.mean(nbar.clusters.p4_lab[:, 0]) > 0.6  # GeV: far above a neutron's
    # a neutron of the same momentum leaves part of its kinetic energy only
    assert np.mean(n.clusters.p4_lab[:, 0]) < 0.2 * np.mean(nbar.clusters.p4_lab[:, 0])


def test_impact_parameters_have_the_configured_resolution():
    """Prompt tracks from a point-like luminous region: dz / dz_err is a unit Gaussian and
    dr / dr_err the absolute value of one; the luminous region adds its length to dz."""
    rng = np.random.default_rng(8)
    point = det.DetectorConfig(beam_photons_mean=0.0, beam_spot_cm=(0.0, 0.0, 0.0))
    for p_cm in (0.3, 1.5):
        made = _single_particles(211, 40_000, p_cm, rng)
        pions = det.simulate_detector(made, ON_RESONANCE, point, rng).tracks
        assert np.std(pions.dz / pions.dz_err) == pytest.approx(1.0, abs=0.02)
        assert np.mean(pions.dr / pions.dr_err) == pytest.approx(np.sqrt(2 / np.pi), abs=0.02)
        p_lab = np.linalg.norm(pions.p4_lab[:, 1:], axis=1)
        sin_t = np.hypot(pions.p4_lab[:, 1], pions.p4_lab[:, 2]) / p_lab
        beta = p_lab / np.hypot(p_lab, 0.13957)
        want = np.hypot(16e-4, 25e-4 / (p_lab * beta * sin_t**2.5))
        # the errors follow the true momentum, the measured one is off by its resolution
        np.testing.assert_allclose(pions.dz_err, want, rtol=0.03)
    pions = _single_particles(211, 40_000, 1.5, rng)
    no_beam_photons = det.DetectorConfig(beam_photons_mean=0.0)
    spread = det.simulate_detector(pions, ON_RESONANCE, no_beam_photons, rng).tracks
    want = np.sqrt(0.025**2 + np.mean(spread.dz_err**2))
    assert np.std(spread.dz) == pytest.approx(want, rel=0.02)


def test_displaced_particles_have_displaced_tracks():
    """A track made 1 mm from the beam line, with the momentum pointing away from it, has
    dr = 1 mm (straight line; resolution 10-20 um); one made on the beam line has dr ~ 0."""
    rng = np.random.default_rng(9)
    n = 2000
    parts = _single_particles(211, n, 1.5, rng)
    p3 = parts.p4[:, 1:]
    # 1 mm from the z axis, perpendicular to the (CM) transverse momentum: d0 = 1 mm
    perp = np.stack([-p3[:, 1], p3[:, 0], np.zeros(n)], axis=1)
    perp /= np.linalg.norm(perp, axis=1)[:, None]
    vertex = np.column_stack([np.zeros(n), perp * 1.0])  # mm, (c t, x, y, z)
    displaced = Particles(parts.offsets, parts.pdg, parts.p4, parts.charge, vertex=vertex)
    beams = det.DetectorConfig(beam_photons_mean=0.0, beam_spot_cm=(0.0, 0.0, 0.0))
    tracks = det.simulate_detector(displaced, ON_RESONANCE, beams, rng).tracks
    # the boost is along z (and a little x): the transverse offset stays about 1 mm
    assert np.median(tracks.dr) == pytest.approx(0.1, rel=0.05)
    prompt = det.simulate_detector(parts, ON_RESONANCE, beams, rng).tracks
    assert np.median(prompt.dr) < 0.003
