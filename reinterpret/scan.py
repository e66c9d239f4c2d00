"""Fits of the alternative signal models: WET couplings and a new invisible particle.

Profile likelihood throughout (the published numbers are Bayesian posterior modes and credible
intervals with flat priors; the report says which it quotes). The couplings are fitted as
their squares over C_VL_SM^2 (the templates' normfactors, bounded at 0 and at |C| = 20, the
paper's prior range) and reported as |C|. Profiles and contours are batches of fits with
the scanned couplings held (:meth:`~knunu.fits.infer.Likelihood.fit_many`); the mass scan
compiles the likelihood once and swaps the new particle's template per mass
(:meth:`~knunu.fits.infer.Likelihood.variant`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyhf

from knunu.errors import FitError, LimitAboveBoundError
from knunu.fits.infer import Likelihood, build_model, significance, upper_limit
from knunu.reinterpret import spectra
from knunu.reinterpret.maps import Map
from knunu.reinterpret.model import SIGNAL_SAMPLES, Term, alternative_workspace

log = logging.getLogger(__name__)

#: |C| range of the fits and scans (the paper's flat priors: 0-20).
C_MAX = 20.0
#: 2 Delta NLL thresholds: 1D 68 / 95 %, 2D 68 / 95 %.
LEVELS_1D = {"68%": 1.0, "95%": 3.841458820694124}
LEVELS_2D = {"68%": 2.295748928898636, "95%": 5.991464547107979}
#: Published WET results (arXiv:2507.12393, Bayesian, flat priors): posterior mode and 95 %
#: credible interval of each |C|.
PUBLISHED_WET = {
    "wet_V": (11.3, (1.86, 16.2)),
    "wet_S": (0.00, (0.00, 15.4)),
    "wet_T": (8.21, (0.00, 11.2)),
}
#: The new particle's normfactor (B(B+ -> K+ X) in units of spectra.BF_UNIT).
X_TERM = "bf_X"
X_MAX = 1.0e4


def wet_terms(null: spectra.Null) -> list[Term]:
    """The three WET templates with their form-factor nuisances (eigen-directions, +-1 sigma)."""
    ff = spectra.form_factors()
    shifts = ff.eigen_shifts()
    nominal = spectra.wet_weights(null)
    hi = [spectra.wet_weights(null, ff.mean + d) for d in shifts]
    lo = [spectra.wet_weights(null, ff.mean - d) for d in shifts]
    return [
        Term(
            name,
            nominal[k],
            {f"{spectra.FF_PREFIX}{e}": (hi[e][k], lo[e][k]) for e in range(len(shifts))},
        )
        for k, name in enumerate(spectra.WET_TERMS)
    ]


def wet_workspace(
    workspace: pyhf.Workspace, maps: Mapping[str, Map], null: spectra.Null
) -> pyhf.Workspace:
    """The workspace with the SM signal replaced by the three WET terms."""
    theta_max = (C_MAX / spectra.C_VL_SM) ** 2
    return alternative_workspace(
        workspace,
        maps,
        wet_terms(null),
        bounds={n: (0.0, theta_max) for n in spectra.WET_TERMS},
        measurement="wet",
    )


def x_workspace(
    workspace: pyhf.Workspace, maps: Mapping[str, Map], null: spectra.Null, m_x: float
) -> pyhf.Workspace:
    """The workspace with B+ -> K+ X (mass ``m_x``) next to the SM signal (held at mu = 1)."""
    own = all(m.variances is not None for m in maps.values())
    term = Term(X_TERM, spectra.x_weights(m_x, null), own_staterror=own)
    return alternative_workspace(
        workspace,
        maps,
        [term],
        keep_sm_signal=True,
        bounds={X_TERM: (0.0, X_MAX)},
        measurement=f"x_{m_x:.4f}",
    )


def with_main_data(lh: Likelihood, main: np.ndarray) -> Likelihood:
    """``lh`` with its main data replaced (its auxiliary data kept, e.g. blinded Asimov)."""
    return lh.with_data(np.concatenate([np.asarray(main, dtype=float), lh.data[lh.nmain :]]))


def _theta(c: np.ndarray | float) -> np.ndarray:
    return (np.asarray(c, dtype=float) / spectra.C_VL_SM) ** 2


def _coupling(theta: np.ndarray | float) -> np.ndarray:
    return spectra.C_VL_SM * np.sqrt(np.clip(np.asarray(theta, dtype=float), 0.0, None))


def intervals(grid: np.ndarray, q: np.ndarray, threshold: float) -> list[tuple[float, float]]:
    """Where a profile ``q`` (2 Delta NLL on ``grid``) lies below ``threshold``, as intervals.

    Edges are linearly interpolated between grid points; an interval reaching the end of the
    grid ends there.

    >>> g = np.linspace(0, 4, 5)
    >>> intervals(g, (g - 2.0) ** 2, 1.0)
    [(1.0, 3.0)]
    """
    ok = np.isfinite(q)  # a failed fit is no information, not a boundary
    grid, q = np.asarray(grid)[ok], np.asarray(q)[ok]
    inside = q < threshold
    out = []
    k = 0
    while k < len(grid):
        if not inside[k]:
            k += 1
            continue
        start = k
        while k < len(grid) and inside[k]:
            k += 1
        lo = grid[start]
        if start > 0:
            a, b = q[start - 1], q[start]
            lo = grid[start - 1] + (threshold - a) / (b - a) * (grid[start] - grid[start - 1])
        hi = grid[k - 1]
        if k < len(grid):
            a, b = q[k - 1], q[k]
            hi = grid[k - 1] + (threshold - a) / (b - a) * (grid[k] - grid[k - 1])
        out.append((float(lo), float(hi)))
    return out


@dataclass(frozen=True)
class WetResult:
    """The WET fit: best couplings, profiles, contours (|C| in EOS's normalisation)."""

    data: str  # what was fitted (observed, or expected: Asimov at which mu)
    best: dict[str, float]  # |C_V|, |C_S|, |C_T| at the profile-likelihood maximum
    nll: float
    vector_only: float  # |C_V| with C_S = C_T = 0
    # the vector-only fit as a signal strength: (|C_V|/C_SM)^2 x (the vector term's yield at
    # the SM point / the SM template's)
    mu_equivalent: float
    profiles: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    intervals: dict[str, dict[str, list[tuple[float, float]]]] = field(default_factory=dict)
    contours: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False
    )
    failed_fits: int = 0


def fit_wet(
    lh: Likelihood,
    data_label: str,
    n_grid: int = 101,
    pairs: Sequence[tuple[str, str]] = (("wet_V", "wet_T"), ("wet_V", "wet_S"), ("wet_S", "wet_T")),
    n_grid_2d: int = 100,
    template_yield: float | None = None,
) -> WetResult:
    """Best fit, 1D profiles of each |C| and 2D profiles of ``pairs`` on an |C| grid.

    Args:
        lh: The WET model's likelihood (:func:`wet_workspace`) with the data to fit.
        data_label: What the data are (printed with every number).
        n_grid: Points of each 1D profile over 0-20.
        pairs: Coupling pairs to scan in 2D (empty: none).
        n_grid_2d: Points per axis of each 2D scan.
        template_yield: The SM template's total yield (for ``mu_equivalent``; default: the
            model's vector template at its SM point).
    """
    idx = {n: lh.labels.index(n) for n in spectra.WET_TERMS}
    best = lh.fit()
    failed = 0
    vo = lh.fit({idx["wet_S"]: 0.0, idx["wet_T"]: 0.0}, best.x)
    ratio = _wet_vector_ratio(lh, template_yield)
    grid = np.linspace(0.0, C_MAX, n_grid)
    profiles, ivals = {}, {}
    for name, i in idx.items():
        fixes = [{i: float(t)} for t in _theta(grid)]
        many = lh.fit_many(np.repeat(lh.data[None], len(fixes), 0), best.x, fixes)
        failed += len(many.failed)
        q = np.clip(2.0 * (many.nll - best.nll), 0.0, None)
        profiles[name] = (grid, q)
        ivals[name] = {lvl: intervals(grid, q, thr) for lvl, thr in LEVELS_1D.items()}
    contours = {}
    g2 = np.linspace(0.0, C_MAX, n_grid_2d)
    for a, b in pairs:
        fixes = [{idx[a]: float(ta), idx[b]: float(tb)} for ta in _theta(g2) for tb in _theta(g2)]
        many = lh.fit_many(np.repeat(lh.data[None], len(fixes), 0), best.x, fixes)
        failed += len(many.failed)
        q = np.clip(2.0 * (many.nll - best.nll), 0.0, None).reshape(len(g2), len(g2))
        contours[f"{a}:{b}"] = (g2, g2, q)
    if failed:
        log.warning("WET scans: %d fits did not converge (NaN in their profiles)", failed)
    c_v = float(_coupling(vo.x[idx["wet_V"]]))
    return WetResult(
        data=data_label,
        best={n: float(_coupling(best.x[i])) for n, i in idx.items()},
        nll=best.nll,
        vector_only=c_v,
        mu_equivalent=float(vo.x[idx["wet_V"]]) * ratio,
        profiles=profiles,
        intervals=ivals,
        contours=contours,
        failed_fits=failed,
    )


def signal_yield(workspace: pyhf.Workspace) -> float:
    """Total SM signal template (mu = 1) of a workspace's signal channels."""
    return sum(
        float(np.sum(s["data"]))
        for c in workspace["channels"]
        for s in c["samples"]
        if s["name"] in SIGNAL_SAMPLES
    )


def _wet_vector_ratio(lh: Likelihood, template_yield: float | None) -> float:
    """Yield of the vector term at the SM point over the SM template's (1 if unknown)."""
    if template_yield is None:
        return 1.0
    vector = sum(
        float(np.sum(s["data"]))
        for c in lh.model.spec["channels"]
        for s in c["samples"]
        if s["name"].endswith("_wet_V")
    )
    return vector / template_yield if template_yield > 0 else math.nan


@dataclass(frozen=True)
class XResult:
    """CLs upper limits on B(B+ -> K+ X) and the local significance, per mass."""

    data: str
    level: float
    masses: np.ndarray
    best: np.ndarray  # fitted B (absolute)
    observed: np.ndarray  # upper limit on B (NaN: none set)
    expected: np.ndarray  # median expected upper limit (background only, Asimov)
    local_z: np.ndarray
    failed: tuple[float, ...] = ()  # masses where a fit or limit failed


def scan_x(
    workspace: pyhf.Workspace,
    maps: Mapping[str, Map],
    null: spectra.Null,
    masses: Sequence[float],
    level: float = 0.95,
    data: np.ndarray | None = None,
    data_label: str = "observed",
    expected: bool = True,
) -> XResult:
    """CLs limits and local significance of B+ -> K+ X at each mass.

    Args:
        workspace: The SM workspace (its signal stays at mu = 1, a background here).
        maps: Map per region.
        null: The null spectrum of the maps' MC.
        masses: m_X values (GeV).
        level: Confidence level of the limits.
        data: Main data to fit instead of the workspace's observed (e.g. blinded Asimov).
        data_label: What the data are.
        expected: Also the median expected limit (doubles the cost).
    """
    base: Likelihood | None = None
    n = len(masses)
    best, obs, exp_, z = (np.full(n, np.nan) for _ in range(4))
    failed = []
    for k, m in enumerate(masses):
        ws = x_workspace(workspace, maps, null, float(m))
        model = build_model(ws)
        lh = None
        if base is not None:
            try:
                lh = base.variant(model)
            except FitError as exc:  # e.g. other empty bins: compiled afresh
                log.debug("m_X = %.3f GeV: %s", m, exc)
        if lh is None:
            lh = Likelihood(model, np.asarray(ws.data(model), dtype=float))
            base = base or lh
        if data is not None:
            lh = with_main_data(lh, data)
        try:
            fit = lh.fit()
            best[k] = fit.x[lh.poi] * spectra.BF_UNIT
            z[k] = significance(lh, fit, 0.0)
            obs[k] = upper_limit(lh, fit, level) * spectra.BF_UNIT
            if expected:
                asimov = _asimov_background(lh)
                exp_[k] = upper_limit(asimov, asimov.fit(), level) * spectra.BF_UNIT
        except (FitError, LimitAboveBoundError) as exc:
            log.warning("m_X = %.3f GeV: %s", m, exc)
            failed.append(float(m))
    return XResult(data_label, level, np.asarray(masses, float), best, obs, exp_, z, tuple(failed))


def _asimov_background(lh: Likelihood) -> Likelihood:
    """Asimov data without the new particle (nuisances from the conditional fit)."""
    cond = lh.profile(lh.poi, 0.0)
    return lh.with_data(lh.expected_data(cond.x))


def summary(result: WetResult | XResult) -> dict[str, Any]:
    """JSON-ready numbers of a result (arrays as lists)."""
    if isinstance(result, WetResult):
        return {
            "data": result.data,
            "best": result.best,
            "nll": result.nll,
            "vector_only": result.vector_only,
            "mu_equivalent": result.mu_equivalent,
            "intervals": result.intervals,
            "profiles": {k: [g.tolist(), q.tolist()] for k, (g, q) in result.profiles.items()},
            "contours": {
                k: {"a": a.tolist(), "b": b.tolist(), "q": q.tolist()}
                for k, (a, b, q) in result.contours.items()
            },
            "failed_fits": result.failed_fits,
        }
    return {
        "data": result.data,
        "level": result.level,
        "masses": result.masses.tolist(),
        "best": result.best.tolist(),
        "observed": result.observed.tolist(),
        "expected": result.expected.tolist(),
        "local_z": result.local_z.tolist(),
        "failed": list(result.failed),
    }
