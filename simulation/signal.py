"""The Standard Model B+ -> K+ nu nubar q^2 spectrum (HPQCD 2022 form factor).

Numbers from ../shared/notes/physics.md. The spectrum integrates to B = 4.97e-6, the
short-distance branching fraction that defines mu = 1.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from knunu.simulation import formfactors
from knunu.simulation import kinematics as kin
from knunu.simulation.generators import Particles

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

# BCL form factor f+ (HPQCD 2022): coefficients a0, a1, a2 of the nominal spectrum. Its
# uncertainty is :func:`form_factor_weight`'s: the eigen-directions of f+'s covariance in the
# vendored fit of FLAG:2021A and HPQCD:2022A (knunu.simulation.formfactors).
BCL_A = (0.2545, -0.71, 0.32)
_L = 1.304
_M_POLE = 5.4158
_T_PLUS = (M_B + M_K) ** 2


def kaon_momentum(q2: np.ndarray | float) -> np.ndarray:
    """Kaon momentum in the B rest frame at dilepton (di-neutrino) mass squared ``q2``."""
    q2 = np.asarray(q2, dtype=float)
    a, b = M_B**2, M_K**2
    lam = a**2 + b**2 + q2**2 - 2 * (a * b + b * q2 + q2 * a)
    return np.sqrt(np.clip(lam, 0.0, None)) / (2 * M_B)


def form_factor(
    q2: np.ndarray | float, coefficients: tuple[float, float, float] = BCL_A
) -> np.ndarray:
    """f+(q2), BCL parametrisation of HPQCD 2022 (or other ``coefficients``).

    >>> round(float(form_factor(0.0)), 3), round(float(form_factor(16.0)), 2)
    (0.332, 1.08)
    """
    q2 = np.asarray(q2, dtype=float)
    root = np.sqrt(_T_PLUS - q2)
    z = (root - np.sqrt(_T_PLUS)) / (root + np.sqrt(_T_PLUS))
    powers = (np.ones_like(z), z, z * z)  # products: libm pow of negative z is ~100x slower
    z3 = powers[2] * z
    series = sum(
        a * (powers[n] - (n / 3) * (-1.0) ** (n - 3) * z3) for n, a in enumerate(coefficients)
    )
    return _L / (1 - q2 / _M_POLE**2) * series


def differential_bf(
    q2: np.ndarray | float, coefficients: tuple[float, float, float] = BCL_A
) -> np.ndarray:
    """dB/dq2 in GeV^-2 (zero outside the physical range)."""
    q2 = np.asarray(q2, dtype=float)
    norm = TAU_B * G_F**2 * ALPHA**2 * V_TB_TS**2 * X_T**2 / (32 * np.pi**5 * SIN2_THETA_W**2)
    inside = (q2 >= 0) & (q2 <= Q2_MAX)
    ff = form_factor(q2, coefficients)
    return np.where(inside, norm * kaon_momentum(q2) ** 3 * ff**2, 0.0)


def branching_fraction(lo: float = 0.0, hi: float = Q2_MAX, n: int = 20001) -> float:
    """Integral of :func:`differential_bf` over [lo, hi] (Simpson's rule).

    >>> round(branching_fraction() * 1e6, 2)
    4.97
    """
    from scipy.integrate import simpson

    grid = np.linspace(lo, hi, n)
    return float(simpson(differential_bf(grid), x=grid))


def form_factor_weight(q2: np.ndarray, component: int, sigma: float) -> np.ndarray:
    """Shape-only event weight moving f+ by ``sigma`` along eigen-direction ``component``.

    The directions are the eigenvectors of f+'s covariance (alpha^f+_0..2 of the vendored
    BSZ2015 fit of FLAG:2021A and HPQCD:2022A, :func:`~knunu.simulation.formfactors.
    f_plus_eigen_shifts`; largest eigenvalue first). The spectrum is proportional to f+^2 at
    fixed q2, so the weight is the fit's (f+ shifted / f+)^2, normalised so that the weighted
    spectrum keeps the nominal's area: the branching fraction the signal strength refers to
    stays 4.97e-6. Until stop 45 the three BCL coefficients of HPQCD 2022 were varied
    independently, which ignores their correlation and gave the q2 bins 0-4 / 12-16 /
    16-23 GeV^2 a shape uncertainty of 6.4 / 4.4 / 9.6 % where the covariance gives 2.6 /
    1.8 / 2.8 %.

    >>> w = form_factor_weight(np.array([1.0, 20.0]), 1, 1.0)
    >>> bool(w[0] > 1 > w[1])
    True
    """
    q2 = np.asarray(q2, dtype=float)
    nominal = differential_bf(q2)
    weight = _f_plus_ratio(q2, component, sigma) * _area_ratio(component, sigma)
    return np.where(nominal > 0, weight, 1.0)


def _f_plus_ratio(q2: np.ndarray, component: int, sigma: float) -> np.ndarray:
    """(f+ shifted / f+)^2 of the vendored fit, at ``q2`` clipped to the physical range."""
    ff = formfactors.form_factors()
    shift = formfactors.f_plus_eigen_shifts()[component]
    x = np.clip(q2, 0.0, Q2_MAX)
    varied = formfactors.bsz2015(x, ff.mean + sigma * shift)[0]
    return (varied / formfactors.bsz2015(x, ff.mean)[0]) ** 2


@lru_cache(maxsize=32)
def _area_ratio(component: int, sigma: float) -> float:
    """The nominal spectrum's area over the re-weighted one's."""
    grid = np.linspace(0.0, Q2_MAX, 4001)
    nominal = differential_bf(grid)
    varied = nominal * _f_plus_ratio(grid, component, sigma)
    return float(np.trapezoid(nominal, grid) / np.trapezoid(varied, grid))


def sample_q2(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` values of q2 from the SM spectrum (inverse CDF on a fine grid)."""
    grid = np.linspace(0.0, Q2_MAX, 4001)
    pdf = differential_bf(grid)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return np.interp(rng.random(n), cdf, grid)


def signal_decays(charge: np.ndarray, rng: np.random.Generator) -> tuple[Particles, np.ndarray]:
    """B -> K nu nubar decays at rest with the SM q2 spectrum.

    Args:
        charge: Charge of each signal B (+1 or -1).
        rng: The random stream.

    Returns:
        (K, nu, nubar per event in the B rest frame, q2gen per event).
    """
    n = len(charge)
    q2 = sample_q2(n, rng)
    kaon, nunu = kin.two_body(M_B, M_K, np.sqrt(q2), kin.isotropic_directions(n, rng))
    nu1, nu2 = kin.two_body(np.sqrt(q2), 0.0, 0.0, kin.isotropic_directions(n, rng))
    beta_nunu = kin.beta_of(nunu)
    nu1, nu2 = kin.boost(nu1, beta_nunu), kin.boost(nu2, beta_nunu)
    p4 = np.stack([kaon, nu1, nu2], axis=1).reshape(-1, 4)
    pdg = np.stack([321 * charge, np.full(n, 12), np.full(n, -12)], axis=1).ravel()
    q = np.stack([charge, np.zeros(n), np.zeros(n)], axis=1).ravel().astype(float)
    return Particles(np.arange(0, 3 * n + 1, 3), pdg.astype(np.int32), p4, q), q2
