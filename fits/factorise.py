"""Signal-region templates factorised from a looser eta cut: MC statistics where MC is scarce.

The ITA signal region (eta(BDT2) > 0.92) keeps a few 1e-5 of the background MC, so a
template filled event by event holds few MC events per bin. The region eta > ``loose`` (0.8
by default) holds 5-20x more. The factorised template of one sample is, per q2rec bin j,

    T(i, j) = N_j x F_j(i),

with ``N_j`` the sample's weighted events at eta > ``loose`` in that q2rec bin and ``F_j(i)``
the fraction of the fitted eta shape (weighted maximum likelihood) in the fit's eta bin ``i``
(q2rec and eta are correlated: harder kaons, lower q2rec, higher eta; so each q2rec bin has
its own shape). Two shapes, each fitted: a power law ``(1 - eta)^k`` (the background density
vanishes towards eta = 1, signal being flat by construction) and an exponential ``exp(a
eta)`` (it does not). On the measurement config's MC both fit eta 0.8-1 equally well; summed
over the backgrounds, the signal-region rows filled event by event are 1.95 / 1.64 / 0.90 /
0.51 (x 1e-2 of the data) against 1.95 / 1.47 / 0.99 / 0.45 from the power law and 1.67 /
1.37 / 1.14 / 0.95 from the exponential. The template is their mean, and the two are the
shape systematic's up (exponential) and down (power law): both positive, every bin. The
shape is tested (:func:`closure` against the filled template, and :func:`sideband_closure`:
the same geometry on eta 0.6-0.8). The MC statistical uncertainty per bin comes from
Gaussian replicas of the loose histogram (each bin moved within its sum of squared weights),
refitted.

The loose histogram is the ITA processor's ``ita_loose`` (eta 0.5-1 in 50 bins x the fit's
q2rec bins, every variation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import optimize

log = logging.getLogger(__name__)

#: The loose histogram's eta axis (ITA processor, ``ita_loose``).
LOOSE_EDGES = np.linspace(0.5, 1.0, 51)
#: Fewer effective loose events than this: the sample's template stays as filled.
MIN_EFFECTIVE = 5.0
#: A q2rec bin with fewer effective loose events takes the eta shape of all q2rec bins.
MIN_COLUMN = 3.0


class Factorised(NamedTuple):
    """A factorised template (the fit's eta bins x q2rec bins) and what it rests on."""

    values: np.ndarray  # the mean of the two shapes' templates
    variances: np.ndarray
    up: np.ndarray  # the exponential's template (the systematic's up)
    down: np.ndarray  # the power law's (its down)
    slope: float  # the power law's k, all q2rec bins together
    loose_effective: float  # (sum w)^2 / sum w^2 of the loose events
    mean_weight: float  # sum w^2 / sum w of the loose events (an event's typical weight)
    loose: float  # the loose eta cut it was fitted above


def _fractions(edges: np.ndarray, lo: float, hi: float, a: float, model: str = "exp") -> np.ndarray:
    """Fractions of a density on [lo, hi] in the bins ``edges`` (inside [lo, hi], hi <= 1).

    ``exp``: ``exp(a x)``; ``power``: ``(1 - x)^a`` (a > -1: vanishing at x = 1 for a > 0).
    """
    edges = np.asarray(edges, dtype=float)
    if model == "power":
        cdf = -((1.0 - edges) ** (a + 1.0))
        return np.diff(cdf) / (-((1.0 - hi) ** (a + 1.0)) + (1.0 - lo) ** (a + 1.0))
    if abs(a) < 1e-9:
        return np.diff(edges) / (hi - lo)
    # the integral of exp(a (x - hi)): no overflow for large |a|
    cdf = np.expm1(a * (edges - hi)) / a
    return np.diff(cdf) / (-np.expm1(a * (lo - hi)) / a)


#: The parameter range of each shape.
_BOUNDS = {"exp": (-200.0, 200.0), "power": (-0.99, 100.0)}


def fit_slope(counts: np.ndarray, edges: np.ndarray, model: str = "exp") -> float:
    """Weighted maximum-likelihood parameter of a shape (:func:`_fractions`) to binned counts.

    >>> edges = np.linspace(0.75, 1.0, 26)
    >>> round(fit_slope(1e6 * _fractions(edges, 0.75, 1.0, -20.0), edges), 3)
    -20.0
    >>> round(fit_slope(1e6 * _fractions(edges, 0.75, 1.0, 1.5, "power"), edges, "power"), 3)
    1.5
    """
    lo, hi = float(edges[0]), float(edges[-1])
    total = float(counts.sum())

    def nll(a: float) -> float:
        p = _fractions(edges, lo, hi, a, model)
        return -float(np.sum(counts * np.log(np.clip(p, 1e-300, None)))) / total

    res = optimize.minimize_scalar(
        nll, bounds=_BOUNDS[model], method="bounded", options={"xatol": 1e-6}
    )
    return float(res.x)


def _template(
    values: np.ndarray,
    variances: np.ndarray,
    loose_edges: np.ndarray,
    eta_edges: np.ndarray,
    loose: float,
    model: str,
) -> tuple[np.ndarray, float]:
    """Per q2rec bin: its loose events x the fitted eta shape's fractions; the pooled slope.

    A q2rec bin with fewer than :data:`MIN_COLUMN` effective loose events takes the shape
    fitted to all q2rec bins together.
    """
    rows = loose_edges[:-1] >= loose - 1e-9
    sub, sub_var = values[rows], variances[rows]
    edges = loose_edges[np.concatenate([rows, [True]])]
    lo, hi = float(edges[0]), float(edges[-1])
    out = np.zeros((len(eta_edges) - 1, values.shape[1]))
    if sub.sum() <= 0:
        return out, 0.0
    pooled = fit_slope(sub.sum(axis=1), edges, model)
    for j in range(values.shape[1]):
        n, n2 = float(sub[:, j].sum()), float(sub_var[:, j].sum())
        if n <= 0:
            continue
        a = fit_slope(sub[:, j], edges, model) if n * n >= MIN_COLUMN * n2 else pooled
        out[:, j] = n * _fractions(eta_edges, lo, hi, a, model)
    return out, pooled


def loose_cut(
    values: np.ndarray,
    variances: np.ndarray,
    cuts: Sequence[float],
    min_effective: float = MIN_EFFECTIVE,
    loose_edges: np.ndarray = LOOSE_EDGES,
) -> tuple[float, float] | None:
    """The loose eta cut to fit above, and the effective events it holds.

    The first of ``cuts`` (tightest first) whose region holds ``min_effective`` effective
    events; if none does, the last (loosest) when it holds :data:`MIN_EFFECTIVE`; else ``None``.

    >>> v = np.zeros((50, 1)); v[20:30] = 1.0  # one event in each bin of eta 0.7-0.8
    >>> loose_cut(v, v, (0.8, 0.7, 0.6), min_effective=8)
    (0.7, 10.0)
    >>> loose_cut(v, v, (0.8,)) is None
    True
    """
    found = None
    for cut in cuts:
        rows = loose_edges[:-1] >= cut - 1e-9
        s, s2 = float(values[rows].sum()), float(variances[rows].sum())
        found = (float(cut), s * s / s2 if s2 > 0 else 0.0)
        if found[1] >= min_effective:
            return found
    return found if found is not None and found[1] >= MIN_EFFECTIVE else None


def factorise(
    values: np.ndarray,
    variances: np.ndarray,
    eta_edges: np.ndarray,
    loose: float | Sequence[float] = 0.8,
    replicas: int = 200,
    seed: int = 0,
    loose_edges: np.ndarray = LOOSE_EDGES,
    min_effective: float = MIN_EFFECTIVE,
) -> Factorised | None:
    """The factorised template of one sample from its loose histogram.

    Args:
        values: Loose histogram (eta rows on ``loose_edges`` x q2rec bins), sum of weights.
        variances: Its sum of squared weights.
        eta_edges: The fit's eta edges (inside [loose, 1]).
        loose: The loose eta cut, or cuts tightest first (:func:`loose_cut` picks one).
        replicas: Gaussian replicas for the MC statistical uncertainty.
        seed: Their random stream.
        loose_edges: The loose histogram's eta edges.
        min_effective: The effective loose events a cut must hold to be taken before a looser.

    Returns:
        The template, or ``None`` when even the loosest region holds fewer than
        :data:`MIN_EFFECTIVE` effective events (too few to fit a shape).
    """
    cuts = (loose,) if isinstance(loose, int | float) else tuple(loose)
    chosen = loose_cut(values, variances, cuts, min_effective, loose_edges)
    if chosen is None:
        return None
    loose, effective = chosen
    rows = loose_edges[:-1] >= loose - 1e-9
    s, s2 = float(values[rows].sum()), float(variances[rows].sum())

    def both(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        power, k = _template(v, variances, loose_edges, eta_edges, loose, "power")
        expo, _ = _template(v, variances, loose_edges, eta_edges, loose, "exp")
        return power, expo, k

    power, expo, k = both(values)
    nominal = (power + expo) / 2
    mean_weight = s2 / s
    if replicas < 1:
        zero = np.zeros_like(nominal)
        return Factorised(nominal, zero, expo, power, k, effective, mean_weight, loose)
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.clip(variances, 0.0, None))
    draws = np.empty((replicas, *nominal.shape))
    for r in range(replicas):
        moved = np.clip(values + sigma * rng.standard_normal(values.shape), 0.0, None)
        p, e, _ = both(moved)
        draws[r] = (p + e) / 2
    return Factorised(nominal, draws.var(axis=0), expo, power, k, effective, mean_weight, loose)


class Closure(NamedTuple):
    """A factorisation compared with the template filled event by event.

    ``chi2`` over ``ndf`` bins; ``ratio`` the factorised over the filled total.
    """

    chi2: float
    ndf: int
    ratio: float


def closure(
    filled: np.ndarray, predicted: np.ndarray, predicted_var: np.ndarray, mean_weight: float
) -> Closure:
    """Filled against predicted, bin by bin, Pearson's chi2.

    The filled template's variance is the prediction's: ``predicted x mean_weight`` (events
    of the typical weight; an empty bin where some are expected counts), plus the
    prediction's own MC variance.

    >>> closure(np.array([4.0, 1.0]), np.array([4.0, 1.0]), np.zeros(2), 1.0)
    Closure(chi2=0.0, ndf=2, ratio=1.0)
    """
    var = predicted * mean_weight + predicted_var
    used = var > 0
    chi2 = float(np.sum((filled[used] - predicted[used]) ** 2 / var[used]))
    total = float(filled.sum())
    ratio = float(predicted.sum()) / total if total > 0 else float("nan")
    return Closure(chi2, int(used.sum()), ratio)


def sideband_closure(
    values: np.ndarray,
    variances: np.ndarray,
    loose_edges: np.ndarray = LOOSE_EDGES,
    window: tuple[float, float, float] = (0.6, 0.72, 0.8),
) -> Closure:
    """The method one step down, where the MC has more events.

    The signal-region template fits eta 0.8-1 and predicts its top 0.92-1 in four bins; here
    the same is done on (lo, top, hi) = 0.6-0.8, predicting 0.72-0.8, per q2rec bin, and
    compared with what was filled there.
    """
    lo, top, hi = window
    rows = (loose_edges[:-1] >= lo - 1e-9) & (loose_edges[1:] <= hi + 1e-9)
    sub, sub_var = values[rows], variances[rows]
    edges = loose_edges[np.concatenate([rows, [False]]) | np.concatenate([[False], rows])]
    n, n2 = float(sub.sum()), float(sub_var.sum())
    if n <= 0 or n2 <= 0:
        return Closure(float("nan"), 0, float("nan"))
    target = np.linspace(top, hi, 5)
    upper = loose_edges[:-1] >= top - 1e-9
    inside = np.flatnonzero(rows & upper)
    filled = np.array([values[g].sum(axis=0) for g in np.array_split(inside, 4)])
    made = factorise(values[rows], variances[rows], target, lo, 0, loose_edges=edges)
    if made is None:
        return Closure(float("nan"), 0, float("nan"))
    return closure(filled, made.values, made.variances, made.mean_weight)
