"""Reconstruction of the ITA ntuple variables from what the detector saw (vectorised).

Event-level: multiplicities, visible and missing energy/momentum, the polar angle of the
missing momentum in the lab, event shapes (thrust, Fox-Wolfram R2, sphericity, CLEO cones).
Per kaon candidate (every track; the processors select): p, pT, cos(theta), charge, kaon ID,
impact parameters, E*_K and q2rec = s/4 + mK^2 - sqrt(s) E*_K, the rest-of-event (ROE) built
from everything else (mass, Mbc, Delta E, charge, multiplicity), D-suppression masses
(K + opposite-charge ROE track as K pi), the ROE's vertex along the beam (its tracks' z fitted
to a common point on the beam line: the kaon's distance to it and the fit's chi2/ndf) and
continuum suppression with the kaon as the signal side (angle to the ROE thrust axis, ROE
thrust, KSFW moments: ``event_shape.signal_side``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from knunu.simulation import detector as det
from knunu.simulation import event_shape as es
from knunu.simulation.detector import DetectorEvents
from knunu.simulation.generators import Particles, per_event_sum
from knunu.simulation.kinematics import boost, mass

M_K = 0.493677
M_PI = 0.13957
M_D0 = 1.86484
#: Tracks that enter the ROE vertex (cm): the kaon's prompt-track cuts, with dr tightened to
#: 1 mm in place of an adaptive fitter's down-weighting of K_S and Lambda daughters (their
#: decays spread over centimetres; B, D and tau flight over tenths of a millimetre).
VERTEX_TRACK = {"dr": 0.1, "dz": 3.0}
#: The luminous region's horizontal width (cm), known to reconstruction (basf2: from its
#: database), as the detector simulates it.
BEAM_SPOT_X_CM = det.DetectorConfig().beam_spot_cm[0]


def _theta_deg(p3: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(np.hypot(p3[..., 0], p3[..., 1]), p3[..., 2]))


def ita_variables(seen: DetectorEvents) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Event-level and per-candidate ITA variables.

    Returns:
        (event columns, candidate columns); candidate columns are flat, grouped by event with
        ``seen.tracks.offsets`` (one candidate per track).
    """
    tr, cl = seen.tracks, seen.clusters
    n = len(seen.sqrt_s)
    sqrt_s = seen.sqrt_s
    n_tracks = np.diff(tr.offsets)
    # mass hypotheses as basf2's particle lists give them: every track a pion in the event
    # sums and the ROE, the candidate a kaon (the detector's true masses are not known)
    pi_lab, pi_cm = track_p4(seen, M_PI)
    visible = per_event_sum(tr.offsets, pi_cm) + per_event_sum(cl.offsets, cl.p4_cm)
    # missing momentum in the lab: beams minus everything seen
    beams_lab = boost(np.column_stack([sqrt_s, np.zeros((n, 3))]), seen.beta_cm)
    vis_lab = per_event_sum(tr.offsets, pi_lab) + per_event_sum(cl.offsets, cl.p4_lab)
    miss_lab = beams_lab - vis_lab
    charge = per_event_sum(tr.offsets, tr.charge.astype(float))
    event = {
        "nTracks": n_tracks.astype(np.int32),
        "nLeptons": per_event_sum(
            tr.offsets, (tr.lepton_id > det.LEPTON_ID_CUT).astype(np.int64)
        ).astype(np.int32),
        "nClusters": np.diff(cl.offsets).astype(np.int32),
        "E_tot": visible[:, 0],
        "E_miss": sqrt_s - visible[:, 0],
        "p_miss": np.linalg.norm(visible[:, 1:], axis=1),
        "theta_miss": _theta_deg(miss_lab[:, 1:]),
        "charge_sum": charge,
        **_event_shapes(seen, pi_cm),
        "sqrt_s": sqrt_s,
    }
    return event, _candidates(seen, pi_cm, visible, charge)


def _event_shapes(seen: DetectorEvents, pi_cm: np.ndarray) -> dict[str, np.ndarray]:
    """Event shapes from all visible momenta in the CM frame (tracks as pions)."""
    tr, cl = seen.tracks, seen.clusters
    n_tracks = np.diff(tr.offsets)
    offsets = np.concatenate([[0], np.cumsum(n_tracks + np.diff(cl.offsets))])
    idx_t = np.repeat(offsets[:-1], n_tracks) + (
        np.arange(len(tr.charge)) - np.repeat(tr.offsets[:-1], n_tracks)
    )
    idx_c = np.repeat(offsets[:-1] + n_tracks, np.diff(cl.offsets)) + (
        np.arange(len(cl.origin)) - np.repeat(cl.offsets[:-1], np.diff(cl.offsets))
    )
    p3 = np.empty((int(offsets[-1]), 3))
    p3[idx_t] = pi_cm[:, 1:]
    p3[idx_c] = cl.p4_cm[:, 1:]
    padded = es.pad(offsets, p3)
    thrust, axis = es.thrust(padded)
    fw = es.fox_wolfram(padded)
    cones = es.cleo_cones(padded, axis)
    h0 = np.where(fw[:, 0] > 0, fw[:, 0], 1.0)
    return {
        "thrust": thrust,
        "R2": fw[:, 2] / h0,
        "R1": fw[:, 1] / h0,
        "R3": fw[:, 3] / h0,
        "R4": fw[:, 4] / h0,
        "sphericity": es.sphericity(padded),
        "cos_thrust_axis": np.abs(axis[:, 2]),
        **{f"cleo_cone_{k}": cones[:, k] for k in range(cones.shape[1])},
    }


def _candidates(
    seen: DetectorEvents, pi_cm: np.ndarray, visible: np.ndarray, charge: np.ndarray
) -> dict[str, np.ndarray]:
    """Every track as a kaon candidate: its variables, its ROE and the signal-side shapes."""
    tr, cl = seen.tracks, seen.clusters
    sqrt_s = seen.sqrt_s
    n_tracks = np.diff(tr.offsets)
    cand_event = np.repeat(np.arange(len(sqrt_s)), n_tracks)
    lab_p3 = tr.p4_lab[:, 1:]
    k4 = track_p4(seen, M_K)[1]
    p3k = k4[:, 1:]
    pk = np.linalg.norm(p3k, axis=1)
    e_k = k4[:, 0]
    roe = visible[cand_event] - pi_cm  # the candidate left the pion sum as it entered
    half = sqrt_s[cand_event] / 2
    roe_p = np.linalg.norm(roe[:, 1:], axis=1)
    side = es.signal_side(
        tr.offsets, p3k, tr.charge, cl.offsets, cl.p4_cm[:, 1:], -visible[:, 1:], e_k, sqrt_s
    )
    return {
        "K_p": np.linalg.norm(lab_p3, axis=1),
        "K_pt": np.hypot(lab_p3[:, 0], lab_p3[:, 1]),
        "K_cosTheta": lab_p3[:, 2] / np.linalg.norm(lab_p3, axis=1),
        "K_charge": tr.charge.astype(np.int32),
        "K_kaonID": tr.kaon_id,
        "K_dr": tr.dr,
        "K_dz": tr.dz,
        "K_pstar": pk,
        "K_Estar": e_k,
        "K_q2rec": sqrt_s[cand_event] ** 2 / 4 + M_K**2 - sqrt_s[cand_event] * e_k,
        "K_roe_mass": mass(roe),
        "K_roe_mbc": np.sqrt(np.clip(half**2 - roe_p**2, 0.0, None)),
        "K_roe_deltaE": roe[:, 0] - half,
        "K_roe_p": roe_p,
        "K_roe_charge": (charge[cand_event] - tr.charge).astype(np.int32),
        "K_roe_nTracks": (n_tracks[cand_event] - 1).astype(np.int32),
        "K_m_Kpi_D0": _kpi_d0_mass(tr.offsets, k4, pi_cm, tr.charge),
        **roe_vertex(tr),
        **{f"K_{name}": values for name, values in side.items()},
    }


def roe_vertex(tr: det.Tracks) -> dict[str, np.ndarray]:
    """Per candidate: the ROE tracks fitted to one point on the beam line.

    The ROE's tracks near the beam line (:data:`VERTEX_TRACK`) give a vertex z, the mean of their dz
    weighted by 1/dz_err^2, and a chi2 of their dz about it plus their dr about the beam line
    (ndf = 2n - 1). In continuum the kaon and the ROE come from one collision point; in
    B Bbar events from two B decays about 0.13 mm apart along the boost, and the ROE's own
    D and tau decays spoil its fit.

    Returns:
        ``K_roe_dz``: the kaon's dz minus the ROE vertex z (cm; 0 without ROE tracks);
        ``K_roe_vtxChi2``: the fit's chi2/ndf (0 without ROE tracks).
    """
    good = (tr.dr < VERTEX_TRACK["dr"]) & (np.abs(tr.dz) < VERTEX_TRACK["dz"])
    w = np.where(good, tr.dz_err**-2.0, 0.0)
    # dr is measured from the beam spot's centre: its width adds to each track's dr error
    dr_err = np.hypot(tr.dr_err, BEAM_SPOT_X_CM)
    terms = np.column_stack(
        [w, w * tr.dz, w * tr.dz**2, np.where(good, (tr.dr / dr_err) ** 2, 0.0), good]
    )
    event = np.repeat(np.arange(len(tr.offsets) - 1), np.diff(tr.offsets))
    roe = per_event_sum(tr.offsets, terms)[event] - terms  # the candidate's own terms out
    sw, swz, swzz, chi2_dr, n_good = roe.T
    has = n_good > 0.5
    safe = np.where(has, sw, 1.0)
    z_roe = swz / safe
    chi2 = np.clip(swzz - swz**2 / safe, 0.0, None) + chi2_dr
    ndf = np.clip(2 * n_good - 1, 1, None)
    return {
        "K_roe_dz": np.where(has, tr.dz - z_roe, 0.0),
        "K_roe_vtxChi2": np.where(has, chi2 / ndf, 0.0),
    }


def ita_truth(seen: DetectorEvents) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """MC-truth ITA branches that systematics need as weights or input shifts.

    Returns:
        (event columns, candidate columns): ``mcE_hadronic`` and ``mcE_photon``, the CM energy
        in clusters from hadrons (K_L, neutrons, split-offs) and from photons; ``mcE_KL`` and
        ``mcKLclusters``, the CM energy and number of K_L clusters; ``K_mcPDG``, the true
        particle behind each kaon candidate.
    """
    cl = seen.clusters
    energy = cl.p4_cm[:, 0]
    hadronic = np.isin(cl.origin, HADRONIC)
    photon = cl.origin == det.PHOTON
    klong = cl.origin == det.KLONG
    event = {
        "mcE_hadronic": per_event_sum(cl.offsets, np.where(hadronic, energy, 0.0)),
        "mcE_photon": per_event_sum(cl.offsets, np.where(photon, energy, 0.0)),
        "mcE_KL": per_event_sum(cl.offsets, np.where(klong, energy, 0.0)),
        "mcKLclusters": per_event_sum(cl.offsets, klong.astype(np.int64)).astype(np.int32),
    }
    return event, {"K_mcPDG": seen.tracks.true_pdg.astype(np.int32)}


def track_p4(seen: DetectorEvents, m: float) -> tuple[np.ndarray, np.ndarray]:
    """Every track's four-momentum under one mass hypothesis: (lab, CM frame)."""
    p3 = seen.tracks.p4_lab[:, 1:]
    lab = np.column_stack([np.sqrt(np.sum(p3**2, axis=1) + m**2), p3])
    event = np.repeat(np.arange(len(seen.sqrt_s)), np.diff(seen.tracks.offsets))
    return lab, boost(lab, -seen.beta_cm[event])


def _kpi_d0_mass(
    offsets: np.ndarray, k4: np.ndarray, p4: np.ndarray, charge: np.ndarray
) -> np.ndarray:
    """The K pi mass closest to the D0 mass, for each candidate.

    The pion is any other track of opposite charge (pion hypothesis); 0 when there is none.
    """
    counts = np.diff(offsets)
    width = int(counts.max(initial=0))
    out = np.zeros(len(k4))
    if width < 2:
        return out
    n = len(counts)
    slot = np.arange(len(k4)) - np.repeat(offsets[:-1], counts)
    rows = np.repeat(np.arange(n), counts)
    pi4 = np.zeros((n, width, 4))
    q = np.zeros((n, width))
    p3 = p4[:, 1:]
    pi4[rows, slot] = np.column_stack([np.sqrt(np.sum(p3**2, 1) + M_PI**2), p3])
    q[rows, slot] = charge
    pair = k4[:, None, :] + pi4[rows]  # (candidates, width, 4)
    m = mass(pair)
    ok = (q[rows] * charge[:, None] < 0) & (np.arange(width)[None, :] != slot[:, None])
    dist = np.where(ok, np.abs(m - M_D0), np.inf)
    best = np.argmin(dist, axis=1)
    has = np.isfinite(dist[np.arange(len(k4)), best])
    out[has] = m[np.arange(len(k4)), best][has]
    return out


@dataclass(frozen=True)
class TagModel:
    """The emulated hadronic tag (Full Event Interpretation), ../shared/notes/physics.md.

    A B is taggable when its whole decay is visible (no neutrino, K_L or neutron) and every
    charged daughter was found; it is then tagged correctly with probability
    ``correct_scale * exp(-correct_slope * n_charged)`` (0.3-0.5 % per B overall). Any event
    (continuum too) can get a wrong tag with probability ``fake``; its Mbc, Delta E and
    signal probability come from combinatorial shapes. ``boost`` draws tags that much more
    often (MC statistics) with the weight p / q in ``__weight__``.
    """

    correct_scale: float = 0.10
    correct_slope: float = 0.3
    fake: float = 1.5e-3
    boost: float = 1.0
    max_signal_tracks: int = 3


_INVISIBLE = (12, 14, 16, 130, 2112)


def hta_variables(
    parts: Particles, seen: DetectorEvents, model: TagModel, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Emulated hadronic-tag candidates and the signal-side variables of the HTA.

    Args:
        parts: Generator-level particles (with ``side`` for B Bbar events).
        seen: What the detector saw (tracks and clusters carry ``side``).
        model: The tag emulation.
        rng: The random stream.

    Returns:
        (indices of the events written, their tag weights p/q, event columns, ``Btag_``
        candidate columns with one candidate per written event).
    """
    tr, cl = seen.tracks, seen.clusters
    n = parts.n_events
    t_event = np.repeat(np.arange(n), np.diff(tr.offsets))
    c_event = np.repeat(np.arange(n), np.diff(cl.offsets))
    p_side = _correct_tag_probabilities(parts, seen, model, t_event)
    p = p_side.sum(axis=1) + model.fake
    q = np.minimum(1.0, model.boost * p)
    tagged = rng.random(n) < q
    # which tag: correct on side 0 or 1, or a wrong one
    u = rng.random(n) * p
    kind = np.where(u < p_side[:, 0], 0, np.where(u < p_side[:, 0] + p_side[:, 1], 1, -1))
    fake_track = rng.random(len(t_event)) < 0.85
    fake_cluster = rng.random(len(c_event)) < 0.6
    in_tag_t = np.where(kind[t_event] >= 0, tr.side == kind[t_event], fake_track)
    in_tag_c = np.where(kind[c_event] >= 0, cl.side == kind[c_event], fake_cluster)
    tag = per_event_sum(tr.offsets, tr.p4_cm * in_tag_t[:, None])
    tag += per_event_sum(cl.offsets, cl.p4_cm * in_tag_c[:, None])
    candidates = _tag_candidates(seen, tag, in_tag_t, kind < 0, rng)
    sig_t = ~in_tag_t
    n_sig = np.bincount(t_event[sig_t], minlength=n)
    keep = np.flatnonzero(tagged & (n_sig >= 1) & (n_sig <= model.max_signal_tracks))
    event = {
        "nSignalTracks": n_sig[keep].astype(np.int32),
        **_signal_side(seen, tag, ((sig_t, t_event), (~in_tag_c, c_event)), keep),
    }
    return keep, (p / q)[keep], event, {k: v[keep] for k, v in candidates.items()}


def _correct_tag_probabilities(
    parts: Particles, seen: DetectorEvents, model: TagModel, t_event: np.ndarray
) -> np.ndarray:
    """Per event and B (side 0, 1): the probability of a correct tag of that B.

    ``t_event``: each track's event.
    """
    n = parts.n_events
    tr = seen.tracks
    side = parts.sides()
    ev = parts.event_index()
    charged = parts.charge != 0
    invisible = np.isin(np.abs(parts.pdg), _INVISIBLE)
    p_side = np.zeros((n, 2))
    for s in (0, 1):
        on = side == s
        n_ch = np.bincount(ev[on & charged], minlength=n)
        n_inv = np.bincount(ev[on & invisible], minlength=n)
        found = np.bincount(t_event[tr.side == s], minlength=n)
        has_b = np.bincount(ev[on], minlength=n) > 0
        ok = has_b & (n_inv == 0) & (found == n_ch)
        p_side[:, s] = np.where(ok, model.correct_scale * np.exp(-model.correct_slope * n_ch), 0)
    return p_side


def _tag_candidates(
    seen: DetectorEvents,
    tag: np.ndarray,
    in_tag_t: np.ndarray,
    fake: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The ``Btag_`` columns of every event: from the tag's four-momentum, or wrong tags'."""
    tr = seen.tracks
    n = len(fake)
    e_beam = seen.sqrt_s / 2
    p_tag = np.linalg.norm(tag[:, 1:], axis=1)
    mbc = np.sqrt(np.clip(e_beam**2 - p_tag**2, 0, None))
    delta_e = tag[:, 0] - e_beam
    tag_charge = per_event_sum(tr.offsets, (tr.charge * in_tag_t).astype(float))
    # wrong tags: combinatorial shapes (ARGUS-like Mbc, flat Delta E, low signal probability)
    mbc = np.where(fake, 5.29 - np.abs(rng.exponential(0.02, n)), mbc)
    delta_e = np.where(fake, rng.uniform(-0.15, 0.1, n), delta_e)
    sig_prob = np.where(fake, rng.beta(1.0, 4.0, n), rng.beta(3.0, 1.0, n))
    return {
        "Btag_mbc": mbc,
        "Btag_deltaE": delta_e,
        "Btag_sigProb": sig_prob,
        "Btag_charge": tag_charge.astype(np.int32),
        "Btag_mcCorrect": (~fake).astype(np.int32),
    }


def _signal_side(
    seen: DetectorEvents,
    tag: np.ndarray,
    signal: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    keep: np.ndarray,
) -> dict[str, np.ndarray]:
    """The signal side of the kept events: its kaon, extra energy, missing mass and energy.

    ``signal``: for tracks and for clusters, (not used by the tag, the event of each).
    """
    tr, cl = seen.tracks, seen.clusters
    (sig_t, t_event), (sig_c, c_event) = signal
    n = len(seen.sqrt_s)
    # the signal-side kaon: the highest-momentum track not used by the tag
    p_cm = np.linalg.norm(tr.p4_cm[:, 1:], axis=1)
    score = np.where(sig_t, p_cm, -1.0)
    best = np.full(n, -1)
    order = np.lexsort((score, t_event))
    last = tr.offsets[1:] - 1
    has_tracks = np.diff(tr.offsets) > 0
    best[has_tracks] = order[last[has_tracks]]
    k = best[keep]
    k3 = tr.p4_cm[k, 1:]
    k4 = np.column_stack([np.sqrt(np.sum(k3**2, 1) + M_K**2), k3])
    sig_b = np.column_stack([seen.sqrt_s[keep] / 2, -tag[keep, 1:]])
    sig_visible = per_event_sum(tr.offsets, tr.p4_cm * sig_t[:, None])[keep]
    sig_visible += per_event_sum(cl.offsets, cl.p4_cm * sig_c[:, None])[keep]
    missing = sig_b - sig_visible
    k_in_b = boost(k4, -(sig_b[:, 1:] / sig_b[:, :1]))
    return {
        "Ksig_p": np.linalg.norm(k3, axis=1),
        "Ksig_pB": np.linalg.norm(k_in_b[:, 1:], axis=1),
        "Ksig_charge": tr.charge[k].astype(np.int32),
        "Ksig_kaonID": tr.kaon_id[k],
        "Ksig_dr": tr.dr[k],
        "Ksig_dz": tr.dz[k],
        "Ksig_cosTheta": tr.p4_lab[k, 3] / np.linalg.norm(tr.p4_lab[k, 1:], axis=1),
        "Ksig_mcPDG": tr.true_pdg[k].astype(np.int32),  # MC truth (dropped for data)
        "E_extra": per_event_sum(cl.offsets, cl.p4_lab[:, 0] * sig_c)[keep],
        "nExtraClusters": np.bincount(c_event[sig_c], minlength=n)[keep].astype(np.int32),
        "m2_miss": _m2(sig_b - k4),
        "m2_miss_all": _m2(missing),
        "E_miss_all": missing[:, 0],
        # MC truth of the extra clusters by origin (dropped for data): the HTA's K_L
        # efficiency and hadronic energy corrections, as the ITA's (``ita_truth``)
        **_extra_truth(cl, sig_c, keep),
    }


#: Cluster origins whose energy the hadronic energy scale moves (K_L, (anti)neutrons, split-offs).
HADRONIC = (det.KLONG, det.NEUTRON, det.ANTINEUTRON, det.SPLITOFF)
#: MC-truth columns of the HTA tree (dropped for data).
HTA_TRUTH_COLUMNS = (
    "Ksig_mcPDG",
    "mcEextra_hadronic",
    "mcEextra_hadronic_cm",
    "mcEextra_KL",
    "mcEextra_KL_cm",
    "mcKLextraClusters",
)


def _extra_truth(cl: det.Clusters, extra: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Energy (lab and CM) of the extra clusters from hadrons and from K_L, and their K_L count."""
    hadronic = extra & np.isin(cl.origin, HADRONIC)
    klong = extra & (cl.origin == det.KLONG)
    lab, cm = cl.p4_lab[:, 0], cl.p4_cm[:, 0]
    return {
        "mcEextra_hadronic": per_event_sum(cl.offsets, lab * hadronic)[keep],
        "mcEextra_hadronic_cm": per_event_sum(cl.offsets, cm * hadronic)[keep],
        "mcEextra_KL": per_event_sum(cl.offsets, lab * klong)[keep],
        "mcEextra_KL_cm": per_event_sum(cl.offsets, cm * klong)[keep],
        "mcKLextraClusters": per_event_sum(cl.offsets, klong.astype(np.int64))[keep].astype(
            np.int32
        ),
    }


def _m2(p4: np.ndarray) -> np.ndarray:
    return p4[:, 0] ** 2 - np.sum(p4[:, 1:] ** 2, axis=1)
