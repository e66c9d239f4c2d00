"""Signal models as q2 spectra, integrated over the map's q2gen bins.

**Weak Effective Theory** (the convention of EOS's ``sbnunu`` sector, as arXiv:2507.12393 used
it): H = (4 G_F / sqrt 2) (alpha_e / 2 pi) V_tb* V_ts sum_i C_i O_i, and (EOS
``eos/rare-b-decays/b-to-psd-nu-nu.cc``, v1.0.17; no interference between the three terms)

    dB/dq2 = tau_B G_F^2 alpha_e^2 |V_tb V_ts|^2 lambda^(1/2) / (256 pi^5 m_B^3)
             x [ lambda f+^2 |C_VL + C_VR|^2
                 + 3 q2 (m_B^2 - m_K^2)^2 / (m_b - m_s)^2 f0^2 |C_SL + C_SR|^2
                 + 16 q2 lambda / (m_B + m_K)^2 fT^2 |C_TL|^2 ],

with EOS's constants (alpha_e = 1/133, |V_tb| = 0.99911, |V_ts| = 0.041212, tau_B+ = 1.641 ps)
and its SM point C_VL = 6.6131 (X_t / sin^2 theta_W), other coefficients 0. The rate is a
quadratic form in the couplings, so each term's bin integrals are computed once and a new
parameter point costs a dot product. The scalar term needs the quark masses at about 4.2 GeV:
m_b = 4.18 GeV (EOS's m_b(m_b), within 0.1 % of m_b(4.2 GeV)) and m_s = 82 MeV (EOS's m_s(2
GeV) = 95 MeV run to 4.2 GeV at one loop with four flavours).

The form factors f+, f0, fT are EOS's BSZ2015 parametrisation with the posterior mode and
covariance the paper used (a fit of FLAG:2021A and HPQCD:2022A; ``knunu/data/``), each
eigen-direction of the covariance a nuisance parameter.

**The null**: the spectrum the signal MC was generated with (the weights are the alternative
over it): HPQCD 2022's f+ (``knunu.simulation.signal``), with the meson masses of the MC that
made the map (knunu's simulation, or Belle II's as the reinterpretation's ``NullPrediction``).

**A new invisible particle**, B+ -> K+ X: two-body, q2 = m_X^2. Its template reads the map's
efficiency at m_X^2, interpolated linearly between the centres of the two nearest q2gen bins.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from knunu.reinterpret.maps import Q2_EDGES
from knunu.simulation import signal as sm
from knunu.simulation.formfactors import bsz2015, form_factors

#: EOS's SM value of C_VL (``sbnunu::Re{cVL}``).
C_VL_SM = 6.613114906357177
#: The three terms of the rate, by the normfactor name of their template: |C|^2 / C_VL_SM^2.
WET_TERMS = ("wet_V", "wet_S", "wet_T")
#: The prefix of the form factors' nuisance parameters.
FF_PREFIX = "ff_bsz2015_e"
#: B(B+ -> K+ X) unit of the new-particle template's normfactor.
BF_UNIT = 1e-6


class Constants(NamedTuple):
    """The rate's constants (EOS v1.0.17 defaults)."""

    g_fermi: float = 1.1663787e-5
    alpha_e: float = 1.0 / 133.0
    v_tb_ts: float = 0.9991111344469873 * 0.04121212396309175
    tau_b: float = 1.641e-12 / 6.58211928e-25  # GeV^-1
    m_b_meson: float = 5.27934
    m_k: float = 0.493677
    m_b: float = 4.18
    m_s: float = 0.082


#: EOS v1.0.17's values.
EOS = Constants()


class Null(NamedTuple):
    """The generated (null) spectrum: HPQCD 2022 f+ with these meson masses."""

    name: str
    m_b_meson: float
    m_k: float


#: knunu's simulation (``knunu.simulation.signal``) and Belle II's (arXiv:2507.12393's
#: ``NullPrediction``: m_B 5.279495, m_K 0.495644 GeV).
NULLS = {
    "knunu": Null("knunu", sm.M_B, sm.M_K),
    "belle2": Null("belle2", 5.279495, 0.495644),
}


def _kallen(a: float, b: float, c: np.ndarray) -> np.ndarray:
    return a * a + b * b + c * c - 2 * (a * b + b * c + a * c)


def wet_densities(q2: np.ndarray, params: np.ndarray, const: Constants = EOS) -> np.ndarray:
    """dB/dq2 of each term per unit |C|^2 / C_VL_SM^2, shape (3, len(q2)), GeV^-2."""
    q2 = np.asarray(q2, dtype=float)
    mb2, mk2 = const.m_b_meson**2, const.m_k**2
    inside = (q2 >= 0) & (q2 < (const.m_b_meson - const.m_k) ** 2)
    lam = np.clip(_kallen(mb2, mk2, q2), 0.0, None)
    fp, f0, ft = bsz2015(np.where(inside, q2, 0.0), params)
    norm = (
        const.tau_b
        * const.g_fermi**2
        * const.alpha_e**2
        * const.v_tb_ts**2
        * np.sqrt(lam)
        / (256 * np.pi**5 * const.m_b_meson**3)
        * C_VL_SM**2
    )
    terms = np.stack(
        [
            lam * fp**2,
            3 * q2 * (mb2 - mk2) ** 2 / (const.m_b - const.m_s) ** 2 * f0**2,
            16 * q2 * lam / (const.m_b_meson + const.m_k) ** 2 * ft**2,
        ]
    )
    return np.where(inside, norm * terms, 0.0)


def null_density(q2: np.ndarray, null: Null) -> np.ndarray:
    """dB/dq2 of the null (HPQCD 2022 f+ as the simulation's, with the null's masses)."""
    q2 = np.asarray(q2, dtype=float)
    mb2, mk2 = null.m_b_meson**2, null.m_k**2
    t_plus = (null.m_b_meson + null.m_k) ** 2
    root = np.sqrt(np.clip(t_plus - q2, 0.0, None))
    z = (root - math.sqrt(t_plus)) / (root + math.sqrt(t_plus))
    series = sum(a * (z**n - (n / 3) * (-1.0) ** (n - 3) * z**3) for n, a in enumerate(sm.BCL_A))
    ff = sm._L / (1 - q2 / sm._M_POLE**2) * series
    lam = np.clip(_kallen(mb2, mk2, q2), 0.0, None)
    norm = sm.TAU_B * sm.G_F**2 * sm.ALPHA**2 * sm.V_TB_TS**2 * sm.X_T**2
    norm /= 32 * np.pi**5 * sm.SIN2_THETA_W**2
    inside = (q2 >= 0) & (q2 <= (null.m_b_meson - null.m_k) ** 2)
    return np.where(inside, norm * lam**1.5 / (2 * null.m_b_meson) ** 3 * ff**2, 0.0)


def _gauss(edges: np.ndarray, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights for every bin of ``edges``, shape (bins, n)."""
    x, w = np.polynomial.legendre.leggauss(n)
    lo, hi = edges[:-1, None], edges[1:, None]
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


def physical_bins(edges: np.ndarray = Q2_EDGES) -> np.ndarray:
    """Mask of the q2gen bins above 0 (the first bin, [-1, 0), holds no generated q2)."""
    return edges[:-1] >= 0


def _to_endpoint(edges: np.ndarray, m_b: float, m_k: float) -> np.ndarray:
    """The edges, the last moved to the kinematic endpoint if that lies beyond it.

    The maps count q2gen up to the endpoint in their last bin.
    """
    out = np.array(edges, dtype=float)
    out[-1] = max(out[-1], (m_b - m_k) ** 2)
    return out


def null_integrals(null: Null, edges: np.ndarray = Q2_EDGES) -> np.ndarray:
    """B of the null in every q2gen bin (0 in the bin below 0; the last to the endpoint)."""
    phys = physical_bins(edges)
    nodes, weights = _gauss(_to_endpoint(edges, null.m_b_meson, null.m_k))
    out = (null_density(nodes.ravel(), null).reshape(nodes.shape) * weights).sum(axis=1)
    return np.where(phys, out, 0.0)


def wet_integrals(
    params: np.ndarray, const: Constants = EOS, edges: np.ndarray = Q2_EDGES
) -> np.ndarray:
    """B of each WET term per unit |C|^2 / C_VL_SM^2 in every q2gen bin, shape (3, bins)."""
    nodes, weights = _gauss(_to_endpoint(edges, const.m_b_meson, const.m_k))
    dens = wet_densities(nodes.ravel(), params, const).reshape(3, *nodes.shape)
    out = (dens * weights).sum(axis=2)
    return np.where(physical_bins(edges), out, 0.0)


def _ratio(alt: np.ndarray, null: np.ndarray) -> np.ndarray:
    return np.divide(alt, null, out=np.zeros_like(alt), where=null > 0)


def wet_weights(null: Null, params: np.ndarray | None = None, const: Constants = EOS) -> np.ndarray:
    """Map weights of the three terms (alternative over null per bin), shape (3, bins).

    The bin below 0 (events without a generated q2: 0.2 % of Belle II's HTA map, none in the
    ITA's or knunu's) scales with the vector term, weight 1 per unit |C_V|^2 / C_VL_SM^2; the
    published reinterpretation (redist) keeps it at its SM yield whatever the couplings.
    """
    params = form_factors().mean if params is None else params
    w = _ratio(wet_integrals(params, const), null_integrals(null))
    w[0, ~physical_bins(Q2_EDGES)] = 1.0
    return w


def x_weights(m_x: float, null: Null, edges: np.ndarray = Q2_EDGES) -> np.ndarray:
    """Map weights of B+ -> K+ X with B = :data:`BF_UNIT` at mass ``m_x`` (GeV).

    The efficiency at q2 = m_X^2 is interpolated linearly between the centres of the two
    nearest q2gen bins (the first and last bins hold below and above their centres).

    Raises:
        ValueError: m_X outside the B+ -> K+ X phase space of the map's bins.
    """
    q2 = m_x * m_x
    phys = np.flatnonzero(physical_bins(edges))
    lo_edge, hi_edge = edges[phys[0]], edges[phys[-1] + 1]
    if not (lo_edge <= q2 <= hi_edge) or m_x < 0:
        raise ValueError(f"m_X = {m_x} GeV outside the map's q2gen range")
    centres = 0.5 * (edges[:-1] + edges[1:])[phys]
    frac = np.zeros(len(edges) - 1)
    k = int(np.searchsorted(centres, q2))
    if k == 0:
        frac[phys[0]] = 1.0
    elif k == len(centres):
        frac[phys[-1]] = 1.0
    else:
        t = (q2 - centres[k - 1]) / (centres[k] - centres[k - 1])
        frac[phys[k - 1]], frac[phys[k]] = 1.0 - t, t
    return BF_UNIT * _ratio(frac, null_integrals(null, edges))
