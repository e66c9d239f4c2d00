"""The Standard Model B+ -> K+ nu nubar q^2 spectrum (HPQCD 2022 form factor).

Numbers from ../shared/notes/physics.md. The spectrum integrates to B = 4.97e-6, the
short-distance branching fraction that defines mu = 1.
"""

from __future__ import annotations

import numpy as np

# Constants (PDG / HPQCD 2022, as in the notes).
G_F = 1.1663787e-5  # GeV^-2
ALPHA = 1.0 / 127.952
X_T = 1.468
SIN2_THETA_W = 0.23124
V_TB_TS = 0.04185
M_B = 5.27950  # GeV (B+)
M_K = 0.49368  # GeV (K+)
TAU_B = 1.638e-12 / 6.58211e-25  # B+ lifetime in GeV^-1
Q2_MAX = (M_B - M_K) ** 2

# BCL form factor f+ (HPQCD 2022).
_A = (0.2545, -0.71, 0.32)
_L = 1.304
_M_POLE = 5.4158
_T_PLUS = (M_B + M_K) ** 2


def kaon_momentum(q2: np.ndarray | float) -> np.ndarray:
    """Kaon momentum in the B rest frame at dilepton (di-neutrino) mass squared ``q2``."""
    q2 = np.asarray(q2, dtype=float)
    a, b = M_B**2, M_K**2
    lam = a**2 + b**2 + q2**2 - 2 * (a * b + b * q2 + q2 * a)
    return np.sqrt(np.clip(lam, 0.0, None)) / (2 * M_B)


def form_factor(q2: np.ndarray | float) -> np.ndarray:
    """f+(q2), BCL parametrisation of HPQCD 2022.

    >>> round(float(form_factor(0.0)), 3), round(float(form_factor(16.0)), 2)
    (0.332, 1.08)
    """
    q2 = np.asarray(q2, dtype=float)
    root = np.sqrt(_T_PLUS - q2)
    z = (root - np.sqrt(_T_PLUS)) / (root + np.sqrt(_T_PLUS))
    series = sum(a * (z**n - (n / 3) * (-1.0) ** (n - 3) * z**3) for n, a in enumerate(_A))
    return _L / (1 - q2 / _M_POLE**2) * series


def differential_bf(q2: np.ndarray | float) -> np.ndarray:
    """dB/dq2 in GeV^-2 (zero outside the physical range)."""
    q2 = np.asarray(q2, dtype=float)
    norm = TAU_B * G_F**2 * ALPHA**2 * V_TB_TS**2 * X_T**2 / (32 * np.pi**5 * SIN2_THETA_W**2)
    inside = (q2 >= 0) & (q2 <= Q2_MAX)
    return np.where(inside, norm * kaon_momentum(q2) ** 3 * form_factor(q2) ** 2, 0.0)


def branching_fraction(lo: float = 0.0, hi: float = Q2_MAX, n: int = 20001) -> float:
    """Integral of :func:`differential_bf` over [lo, hi] (Simpson's rule).

    >>> round(branching_fraction() * 1e6, 2)
    4.97
    """
    from scipy.integrate import simpson

    grid = np.linspace(lo, hi, n)
    return float(simpson(differential_bf(grid), x=grid))


def sample_q2(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` values of q2 from the SM spectrum (inverse CDF on a fine grid)."""
    grid = np.linspace(0.0, Q2_MAX, 4001)
    pdf = differential_bf(grid)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return np.interp(rng.random(n), cdf, grid)
