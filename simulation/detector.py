"""A fast Belle II-like detector response, vectorised over all particles of a batch.

Generator-level particles (CM frame) are boosted to the lab with each event's beams, then:

- charged particles in 17-150 deg become tracks with a pT-dependent finding efficiency and the
  Belle II resolution sigma(pT)/pT = 0.0011 pT (+) 0.0025/beta, impact parameters dr, dz
  measured from each particle's production vertex (the event's collision point in the
  luminous region, plus the flight of B, D, tau, K_S and Lambda) with a momentum-dependent
  resolution, and a kaon-ID likelihood ratio (68 % kaon efficiency, 1.2 % pion mis-ID at
  kaonID > 0.9);
- photons in the ECL (12.4-155.1 deg) above threshold become clusters with
  sigma_E/E = 1.6 %/sqrt(E) (+) 1.2 % (2 % at 1 GeV);
- K_L leave a partial hadronic shower in the ECL with some probability, neutrons rarely;
  antineutrons annihilate, more often than a neutron interacts, and deposit part of the
  annihilation energy 2 m_n + T_kin;
  charged hadrons sometimes leave an unmatched hadronic split-off cluster;
- beam-background photons are added; neutrinos are invisible.

All numbers are in :class:`DetectorConfig` (data, so corrections such as a K_L efficiency or
hadronic energy scale differing between nature and MC are a config switch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from knunu.simulation.generators import Particles, rows_of
from knunu.simulation.kinematics import Beams, beta_of, boost, sample_beams

KAON_ID_CUT = 0.9
#: Lepton ID (electron or muon) passes above this.
LEPTON_ID_CUT = 0.9

#: Cluster origins (truth, for systematics as weights).
PHOTON, KLONG, NEUTRON, SPLITOFF, BEAM, ANTINEUTRON = 0, 1, 2, 3, 4, 5
M_NEUTRON = 0.939565

_NEUTRINOS = (12, 14, 16)
#: Masses of the charged species that make tracks (|PDG| -> GeV); others get the pion mass.
_TRACK_PDG = np.array([11, 13, 211, 321, 2212])
_TRACK_MASS = np.array([0.000511, 0.105658, 0.13957, 0.493677, 0.938272])


@dataclass(frozen=True)
class DetectorConfig:
    """Detector parameters (defaults: Belle II-like, ../shared/notes/physics.md)."""

    track_theta_deg: tuple[float, float] = (17.0, 150.0)
    ecl_theta_deg: tuple[float, float] = (12.4, 155.1)
    track_pt_turn_on: float = 0.1  # GeV: finding efficiency reaches half of plateau at 0.05
    track_efficiency: float = 0.99
    pt_res_a: float = 0.0011
    pt_res_b: float = 0.0025
    # The luminous region (1 sigma, cm): SuperKEKB's nano-beam scheme collides beams of
    # sigma_x* = 10 um and sigma_y* = 0.05-0.2 um at a half crossing angle of 41.5 mrad, so
    # the collisions spread along z over sigma_x*/phi = 0.25 mm (Ohnishi et al., PTEP 2013,
    # 03A011). basf2 measures dr, dz from its centre.
    beam_spot_cm: tuple[float, float, float] = (10e-4, 0.2e-4, 250e-4)
    # Impact-parameter resolutions (cm): a (+) b / (p beta sin^k theta), p in GeV; the
    # Belle II TDR's design figures for the PXD + SVD (KEK Report 2010-1, arXiv:1011.0352:
    # about 10-20 um for stiff tracks, multiple scattering dominating below 1 GeV), k = 3/2
    # for dr and 5/2 for dz.
    d0_res_cm: tuple[float, float] = (12e-4, 20e-4)
    z0_res_cm: tuple[float, float] = (16e-4, 25e-4)
    kaon_efficiency: float = 0.68  # at kaon_id_pivot_gev
    pion_misid: float = 0.012  # at kaon_id_pivot_gev
    kaon_id_pivot_gev: float = 1.5
    kaon_efficiency_slope: float = -0.06  # per GeV of lab momentum (Cherenkov angles merge)
    pion_misid_slope: float = 0.004  # per GeV
    lepton_efficiency: float = 0.9  # e and mu above lepton_p_min_gev (ECL / KLM)
    lepton_misid: float = 0.005  # hadrons taken for leptons
    lepton_p_min_gev: float = 0.4
    photon_threshold: float = 0.05
    ecl_stochastic: float = 0.016
    ecl_constant: float = 0.012
    kl_ecl_efficiency: float = 0.5
    kl_energy_fraction: tuple[float, float] = (0.1, 0.6)
    neutron_ecl_efficiency: float = 0.1
    # Antineutrons: the ECL's 30 cm of CsI(Tl) are 0.79 nuclear interaction lengths (PDG
    # atomic and nuclear properties: lambda_I = 38.0 cm), 55 % for a K_L to interact (as
    # kl_ecl_efficiency); antineutron-nucleus annihilation at p < 1 GeV is about 1.5x the
    # neutron inelastic cross section (OBELIX, Astrua et al., Nucl. Phys. A 697 (2002) 209),
    # so 1 - exp(-0.79 x 1.5) = 0.69. The annihilation releases 2 m_n + T_kin into about 5
    # pions (PDG: pbar p annihilation at rest); the pi0 photons shower in the crystals, the
    # charged pions leave about 0.17 GeV each (MIP over 30 cm) or interact: 25-55 % of it
    # is seen (0.5-1.0 GeV for a slow antineutron).
    antineutron_ecl_efficiency: float = 0.69
    antineutron_energy_fraction: tuple[float, float] = (0.25, 0.55)
    splitoff_probability: float = 0.08
    hadronic_energy_scale: float = 1.0
    beam_photons_mean: float = 1.5
    beam_photon_energy: float = 0.06


@dataclass(frozen=True)
class Tracks:
    """Reconstructed tracks, columnar with event offsets."""

    offsets: np.ndarray
    p4_lab: np.ndarray
    p4_cm: np.ndarray
    charge: np.ndarray
    true_pdg: np.ndarray
    kaon_id: np.ndarray
    lepton_id: np.ndarray
    dr: np.ndarray  # cm, transverse distance of closest approach to the beam-spot centre
    dz: np.ndarray  # cm, its z
    dr_err: np.ndarray  # cm, the track fit's errors of dr and dz
    dz_err: np.ndarray
    side: np.ndarray  # truth: which B made the track (0, 1), -1 for none


@dataclass(frozen=True)
class Clusters:
    """Reconstructed ECL clusters (not matched to tracks), columnar with event offsets."""

    offsets: np.ndarray
    p4_lab: np.ndarray
    p4_cm: np.ndarray
    origin: np.ndarray
    side: np.ndarray  # truth: which B made the cluster (0, 1), -1 for none or beam background


@dataclass(frozen=True)
class DetectorEvents:
    """What the detector saw, plus the per-event boost (lab velocity of the CM frame)."""

    tracks: Tracks
    clusters: Clusters
    beta_cm: np.ndarray
    sqrt_s: np.ndarray

    def take(self, entries: np.ndarray) -> DetectorEvents:
        """The given events only (e.g. those a filter keeps), in that order."""
        t_off, t_rows = rows_of(self.tracks.offsets, entries)
        c_off, c_rows = rows_of(self.clusters.offsets, entries)
        tracks = Tracks(t_off, *(getattr(self.tracks, f)[t_rows] for f in _TRACK_COLUMNS))
        clusters = Clusters(c_off, *(getattr(self.clusters, f)[c_rows] for f in _CLUSTER_COLUMNS))
        return DetectorEvents(tracks, clusters, self.beta_cm[entries], self.sqrt_s[entries])


_TRACK_COLUMNS = (
    "p4_lab",
    "p4_cm",
    "charge",
    "true_pdg",
    "kaon_id",
    "lepton_id",
    "dr",
    "dz",
    "dr_err",
    "dz_err",
    "side",
)
_CLUSTER_COLUMNS = ("p4_lab", "p4_cm", "origin", "side")


def _theta_deg(p4: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(np.hypot(p4[:, 1], p4[:, 2]), p4[:, 3]))


def _offsets(event: np.ndarray, n_events: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.bincount(event, minlength=n_events))])


def _with_energy(p3: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.concatenate([np.sqrt(np.sum(p3**2, axis=1) + m**2)[:, None], p3], axis=1)


def simulate_detector(
    parts: Particles,
    beams: Beams,
    cfg: DetectorConfig,
    rng: np.random.Generator,
    total: np.ndarray | None = None,
) -> DetectorEvents:
    """Apply the detector response to a batch of generated events.

    Args:
        parts: Generator-level final-state particles in the CM frame.
        beams: Beam energies and spreads (on or off resonance).
        cfg: Detector parameters.
        rng: The random stream (seeded by the caller; one per output file).
        total: Per-event e+e- four-momenta (lab) when the generator already drew them
            (B Bbar events are made at each event's sqrt(s)); else drawn from ``beams``.
    """
    n = parts.n_events
    if total is None:
        total = sample_beams(beams, n, rng)
    beta = beta_of(total)
    event = parts.event_index()
    lab = boost(parts.p4, beta[event])
    seen = (event, lab, _theta_deg(lab))
    collision = rng.normal(0.0, 1.0, (n, 3)) * np.asarray(cfg.beam_spot_cm)
    tracks, idx, p3_lab = _tracks(parts, seen, beta, collision, cfg, rng)
    pieces = [
        _ecl_clusters(parts, seen, cfg, rng),
        _splitoffs(event[idx], tracks, p3_lab, cfg, rng),
        _beam_photons(n, cfg, rng),
    ]
    clusters = _clusters(pieces, n, beta)
    sqrt_s = np.sqrt(total[:, 0] ** 2 - np.sum(total[:, 1:] ** 2, axis=1))
    return DetectorEvents(tracks, clusters, beta, sqrt_s)


#: Per generated particle: its event, lab four-momentum and polar angle (degrees).
_Lab = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tracks(
    parts: Particles,
    seen: _Lab,
    beta: np.ndarray,
    collision: np.ndarray,
    cfg: DetectorConfig,
    rng: np.random.Generator,
) -> tuple[Tracks, np.ndarray, np.ndarray]:
    """Found charged particles as tracks; also their particle rows and lab momenta.

    ``collision``: each event's collision point (cm, from the beam-spot centre).
    """
    event, lab, theta = seen
    abs_pdg = np.abs(parts.pdg)
    charged = parts.charge != 0
    pt = np.hypot(lab[:, 1], lab[:, 2])
    in_acc = (theta > cfg.track_theta_deg[0]) & (theta < cfg.track_theta_deg[1])
    eff = cfg.track_efficiency / (1.0 + np.exp(-(pt - cfg.track_pt_turn_on / 2) / 0.01))
    found = charged & in_acc & (rng.random(len(pt)) < eff)
    idx = np.flatnonzero(found)
    p_true = np.linalg.norm(lab[idx, 1:], axis=1)
    species = np.searchsorted(_TRACK_PDG, abs_pdg[idx]).clip(0, len(_TRACK_PDG) - 1)
    known = _TRACK_PDG[species] == abs_pdg[idx]
    mass = np.where(known, _TRACK_MASS[species], _TRACK_MASS[2])
    beta_particle = p_true / np.sqrt(p_true**2 + mass**2)
    rel = np.hypot(cfg.pt_res_a * pt[idx], cfg.pt_res_b / beta_particle)
    scale = 1.0 + rel * rng.standard_normal(len(idx))
    p3_lab = lab[idx, 1:] * scale[:, None]
    # track energies use the true mass; candidate builders apply their own mass hypothesis
    track_lab = _with_energy(p3_lab, mass)
    kaon_id = _kaon_id(abs_pdg[idx], p_true, cfg, rng)
    lepton_id = _lepton_id(abs_pdg[idx], p_true, cfg, rng)
    # production points in the lab (cm, from the beam-spot centre), for the tracks only
    t_event = event[idx]
    vertex = boost(parts.vertices()[idx].astype(np.float64), beta[t_event])[:, 1:] / 10.0
    d0, z0 = impact_parameters(vertex + collision[t_event], lab[idx, 1:])
    sin_t = np.hypot(lab[idx, 1], lab[idx, 2]) / p_true
    p_beta = p_true * beta_particle
    dr_err = np.hypot(cfg.d0_res_cm[0], cfg.d0_res_cm[1] / (p_beta * sin_t**1.5))
    dz_err = np.hypot(cfg.z0_res_cm[0], cfg.z0_res_cm[1] / (p_beta * sin_t**2.5))
    dr = np.abs(d0 + dr_err * rng.standard_normal(len(idx)))
    dz = z0 + dz_err * rng.standard_normal(len(idx))
    tracks = Tracks(
        offsets=_offsets(event[idx], parts.n_events),
        p4_lab=track_lab,
        p4_cm=boost(track_lab, -beta[event[idx]]),
        charge=parts.charge[idx].astype(np.int8),
        true_pdg=parts.pdg[idx],
        kaon_id=kaon_id,
        lepton_id=lepton_id,
        dr=dr,
        dz=dz,
        dr_err=dr_err,
        dz_err=dz_err,
        side=parts.sides()[idx],
    )
    return tracks, idx, p3_lab


def impact_parameters(vertex: np.ndarray, p3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed transverse and longitudinal impact parameters of straight tracks to the z axis.

    A track leaves ``vertex`` along ``p3``; (d0, z0) are the signed transverse distance
    of its closest approach to the z axis and the z there. Straight lines stand for the
    helices (radius R = p_T / 0.45 GeV m in 1.5 T): a track made a distance L from the axis
    moves its d0 by about L^2 / 2R: under a micrometre for the B and D flight of a few hundred
    micrometres, but tens of micrometres (L = 1 cm) to millimetres (5 cm, p_T 0.3 GeV) for a
    track from a K_S or Lambda decay, whose impact parameters are far outside every cut
    either way.

    >>> d0, z0 = impact_parameters(np.array([[0.1, 0.0, 0.2]]), np.array([[0.0, 1.0, 1.0]]))
    >>> round(float(d0[0]), 6), round(float(z0[0]), 6)
    (0.1, 0.2)
    """
    pt2 = np.clip(p3[:, 0] ** 2 + p3[:, 1] ** 2, 1e-12, None)
    d0 = (vertex[:, 0] * p3[:, 1] - vertex[:, 1] * p3[:, 0]) / np.sqrt(pt2)
    s = -(vertex[:, 0] * p3[:, 0] + vertex[:, 1] * p3[:, 1]) / pt2
    return d0, vertex[:, 2] + s * p3[:, 2]


#: Clusters before they are sorted by event: (event, lab momentum, origin, side).
_Piece = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _ecl_clusters(
    parts: Particles, seen: _Lab, cfg: DetectorConfig, rng: np.random.Generator
) -> _Piece:
    """Photons, K_L, neutrons and annihilating antineutrons in the ECL above threshold."""
    event, lab, theta = seen
    abs_pdg = np.abs(parts.pdg)
    in_ecl = (theta > cfg.ecl_theta_deg[0]) & (theta < cfg.ecl_theta_deg[1])
    energy = np.zeros(len(lab))
    origin = np.full(len(lab), -1)
    photon = (abs_pdg == 22) & in_ecl
    energy[photon] = lab[photon, 0]
    origin[photon] = PHOTON
    kinetic = lab[:, 0] - np.sqrt(np.clip(lab[:, 0] ** 2 - np.sum(lab[:, 1:] ** 2, 1), 0, None))
    lo, hi = cfg.kl_energy_fraction
    kl = (abs_pdg == 130) & in_ecl & (rng.random(len(lab)) < cfg.kl_ecl_efficiency)
    energy[kl] = kinetic[kl] * rng.uniform(lo, hi, kl.sum()) * cfg.hadronic_energy_scale
    origin[kl] = KLONG
    neutron = (parts.pdg == 2112) & in_ecl & (rng.random(len(lab)) < cfg.neutron_ecl_efficiency)
    energy[neutron] = kinetic[neutron] * rng.uniform(lo, hi, neutron.sum())
    energy[neutron] *= cfg.hadronic_energy_scale
    origin[neutron] = NEUTRON
    anti = (parts.pdg == -2112) & in_ecl
    anti &= rng.random(len(lab)) < cfg.antineutron_ecl_efficiency
    a_lo, a_hi = cfg.antineutron_energy_fraction
    released = kinetic[anti] + 2 * M_NEUTRON
    energy[anti] = released * rng.uniform(a_lo, a_hi, anti.sum()) * cfg.hadronic_energy_scale
    origin[anti] = ANTINEUTRON
    resolution = np.hypot(
        cfg.ecl_stochastic / np.sqrt(np.clip(energy, 1e-6, None)), cfg.ecl_constant
    )
    measured = energy * (1.0 + resolution * rng.standard_normal(len(energy)))
    keep = (origin >= 0) & (measured > cfg.photon_threshold)
    direction = lab[keep, 1:] / np.linalg.norm(lab[keep, 1:], axis=1)[:, None]
    return event[keep], direction * measured[keep, None], origin[keep], parts.sides()[keep]


def _splitoffs(
    event: np.ndarray,
    tracks: Tracks,
    p3_lab: np.ndarray,
    cfg: DetectorConfig,
    rng: np.random.Generator,
) -> _Piece | None:
    """Split-offs of found charged hadrons: unmatched hadronic clusters near the track."""
    hadron = np.isin(np.abs(tracks.true_pdg), (211, 321, 2212))
    split = hadron & (rng.random(len(event)) < cfg.splitoff_probability)
    if not split.any():
        return None
    e_split = rng.exponential(0.12, split.sum()) * cfg.hadronic_energy_scale
    d = p3_lab[split] / np.linalg.norm(p3_lab[split], axis=1)[:, None]
    d = d + rng.normal(0.0, 0.08, d.shape)
    d /= np.linalg.norm(d, axis=1)[:, None]
    ok = e_split > cfg.photon_threshold
    origin = np.full(ok.sum(), SPLITOFF)
    return event[split][ok], d[ok] * e_split[ok, None], origin, tracks.side[split][ok]


def _beam_photons(n: int, cfg: DetectorConfig, rng: np.random.Generator) -> _Piece | None:
    """Beam-background photons, isotropic over the ECL."""
    n_beam = rng.poisson(cfg.beam_photons_mean, n)
    if not n_beam.sum():
        return None
    b_event = np.repeat(np.arange(n), n_beam)
    e_beam = cfg.photon_threshold + rng.exponential(cfg.beam_photon_energy, len(b_event))
    cos_lo, cos_hi = np.cos(np.radians(cfg.ecl_theta_deg[::-1]))
    cos_t = rng.uniform(cos_lo, cos_hi, len(b_event))
    phi = rng.uniform(0, 2 * np.pi, len(b_event))
    sin_t = np.sqrt(1 - cos_t**2)
    d = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1)
    origin = np.full(len(b_event), BEAM)
    return b_event, d * e_beam[:, None], origin, np.full(len(b_event), -1, dtype=np.int8)


def _clusters(pieces: list[_Piece | None], n: int, beta: np.ndarray) -> Clusters:
    """The pieces' clusters in event order (stable within an event)."""
    kept = [p for p in pieces if p is not None]
    event, p3, origin, side = (np.concatenate(column) for column in zip(*kept, strict=True))
    order = np.argsort(event, kind="stable")
    cl_event = event[order]
    cl_lab = _with_energy(p3[order], np.zeros(len(order)))
    return Clusters(
        offsets=_offsets(cl_event, n),
        p4_lab=cl_lab,
        p4_cm=boost(cl_lab, -beta[cl_event]),
        origin=origin[order].astype(np.int8),
        side=side[order].astype(np.int8),
    )


def _lepton_id(
    abs_pdg: np.ndarray, p: np.ndarray, cfg: DetectorConfig, rng: np.random.Generator
) -> np.ndarray:
    """A lepton-ID likelihood ratio in [0, 1].

    Electrons and muons above the momentum threshold pass LEPTON_ID_CUT with the lepton
    efficiency, every other track with the mis-ID rate.
    """
    lepton = np.isin(abs_pdg, (11, 13)) & (p > cfg.lepton_p_min_gev)
    passing = rng.random(len(abs_pdg)) < np.where(lepton, cfg.lepton_efficiency, cfg.lepton_misid)
    high = LEPTON_ID_CUT + (1 - LEPTON_ID_CUT) * rng.random(len(abs_pdg))
    return np.where(passing, high, LEPTON_ID_CUT * rng.beta(1.0, 6.0, len(abs_pdg)))


def _kaon_id(
    abs_pdg: np.ndarray, p: np.ndarray, cfg: DetectorConfig, rng: np.random.Generator
) -> np.ndarray:
    """A kaon-ID likelihood ratio in [0, 1].

    Kaons pass KAON_ID_CUT with the kaon efficiency, pions (and other tracks) with the mis-ID
    rate, both linear in the lab momentum ``p`` around the pivot (efficiency falling and mis-ID
    rising with momentum); the shapes peak at 1 (kaons) and at 0 (others).
    """
    is_kaon = abs_pdg == 321
    dp = p - cfg.kaon_id_pivot_gev
    eff = np.clip(cfg.kaon_efficiency + cfg.kaon_efficiency_slope * dp, 0.05, 0.99)
    misid = np.clip(cfg.pion_misid + cfg.pion_misid_slope * dp, 0.001, 0.2)
    passing = rng.random(len(abs_pdg)) < np.where(is_kaon, eff, misid)
    high = KAON_ID_CUT + (1 - KAON_ID_CUT) * rng.beta(np.where(is_kaon, 3.0, 1.0), 1.0)
    low_shape = np.where(
        is_kaon, rng.beta(2.0, 1.0, len(abs_pdg)), rng.beta(1.0, 6.0, len(abs_pdg))
    )
    return np.where(passing, high, KAON_ID_CUT * low_shape)
