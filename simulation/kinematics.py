"""Four-vector kinematics for the Belle II-like simulation (vectorised numpy).

Four-vectors are arrays ``(..., 4)`` ordered (E, px, py, pz) in GeV. The lab frame has z along
the solenoid axis; the beams cross at 83 mrad in the x-z plane, so the CM boost has a small x
component as at SuperKEKB.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

M_ELECTRON = 0.000511
CROSSING_ANGLE = 0.083  # rad, full angle


class Beams(NamedTuple):
    """Nominal beam energies (GeV) and energy spreads (GeV)."""

    e_her: float = 7.004
    e_ler: float = 4.002
    spread_her: float = 0.00513
    spread_ler: float = 0.002375


#: On resonance (Upsilon(4S)) and 60 MeV below (off resonance).
ON_RESONANCE = Beams()
OFF_RESONANCE = Beams(e_her=6.964, e_ler=3.979)


def beam_four_momenta(e_her: np.ndarray | float, e_ler: np.ndarray | float) -> np.ndarray:
    """Total e+e- four-momentum, shape ``(..., 4)``, for beam energies ``e_her``/``e_ler``."""
    e_her = np.asarray(e_her, dtype=float)
    e_ler = np.asarray(e_ler, dtype=float)
    half = CROSSING_ANGLE / 2
    p_her = np.sqrt(e_her**2 - M_ELECTRON**2)
    p_ler = np.sqrt(e_ler**2 - M_ELECTRON**2)
    px = (p_her + p_ler) * np.sin(half)
    pz = (p_her - p_ler) * np.cos(half)
    return np.stack([e_her + e_ler, px, np.zeros_like(px), pz], axis=-1)


def sample_beams(beams: Beams, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-event total four-momenta with the beam-energy spread, shape ``(n, 4)``."""
    e_her = rng.normal(beams.e_her, beams.spread_her, n)
    e_ler = rng.normal(beams.e_ler, beams.spread_ler, n)
    return beam_four_momenta(e_her, e_ler)


def mass(p4: np.ndarray) -> np.ndarray:
    """Invariant mass (negative mass squared clipped to 0)."""
    m2 = p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1)
    return np.sqrt(np.clip(m2, 0.0, None))


def beta_of(p4: np.ndarray) -> np.ndarray:
    """Velocity (3-vector) of a system with four-momentum ``p4``."""
    return p4[..., 1:] / p4[..., :1]


def boost(p4: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Boost four-vectors by velocity ``beta``.

    Takes vectors from the frame that moves with ``beta`` to the frame in which it moves.
    Shapes broadcast: ``p4 (..., 4)``, ``beta (..., 3)``.

    >>> p = np.array([1.0, 0.0, 0.0, 0.0])
    >>> np.round(boost(p, np.array([0.0, 0.0, 0.6])), 6).tolist()
    [1.25, 0.0, 0.0, 0.75]
    """
    beta = np.asarray(beta, dtype=float)
    # a massless system (|beta| = 1 up to rounding) is held just below the speed of light
    b2 = np.minimum(np.sum(beta**2, axis=-1, keepdims=True), 1.0 - 1e-15)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(beta * p4[..., 1:], axis=-1, keepdims=True)
    safe_b2 = np.where(b2 > 0, b2, 1.0)
    coeff = np.where(b2 > 0, (gamma - 1.0) / safe_b2, 0.0)
    energy = gamma * (p4[..., :1] + bp)
    momentum = p4[..., 1:] + coeff * bp * beta + gamma * p4[..., :1] * beta
    return np.concatenate([energy, momentum], axis=-1)


def isotropic_directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors uniform on the sphere, shape ``(n, 3)``."""
    cos_t = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    sin_t = np.sqrt(1.0 - cos_t**2)
    return np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=-1)


def two_body(
    m_parent: np.ndarray | float,
    m1: np.ndarray | float,
    m2: np.ndarray | float,
    directions: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Daughter four-momenta of parent -> 1 + 2 in the parent rest frame.

    Daughter 1 flies along ``directions`` (shape ``(n, 3)``).
    """
    m_parent, m1, m2 = (np.asarray(m, dtype=float) for m in (m_parent, m1, m2))
    lam = (m_parent**2 - (m1 + m2) ** 2) * (m_parent**2 - (m1 - m2) ** 2)
    p = np.broadcast_to(np.sqrt(np.clip(lam, 0.0, None)) / (2 * m_parent), directions.shape[:-1])
    p3 = p[..., None] * directions
    e1 = np.sqrt(p**2 + m1**2)[..., None]
    e2 = np.sqrt(p**2 + m2**2)[..., None]
    return np.concatenate([e1, p3], axis=-1), np.concatenate([e2, -p3], axis=-1)


def sample_sin2(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw cos(theta) with density proportional to sin^2(theta).

    This is the B direction in Upsilon(4S) -> B Bbar relative to the beam axis.
    """
    out = np.empty(0)
    while len(out) < n:
        c = rng.uniform(-1.0, 1.0, 2 * (n - len(out)) + 16)
        keep = rng.random(len(c)) < 1.0 - c**2
        out = np.concatenate([out, c[keep]])
    return out[:n]
