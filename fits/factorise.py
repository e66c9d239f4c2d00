"""Signal-region templates factorised from a looser eta cut: MC statistics where MC is scarce.

The ITA signal region (eta(BDT2) > 0.92) keeps a few 1e-5 of the background MC, so a
template filled event by event holds few MC events per bin. The region eta > ``loose`` (0.8
by default) holds 5-20x more. The factorised template of one sample is, per q2rec bin j,

    T(i, j) = N_j x F_j(i) x r_i,

with ``N_j`` the sample's weighted events at eta > ``loose`` in that q2rec bin, ``F_j(i)`` the
fraction of the fitted eta shape (weighted maximum likelihood) in the fit's eta bin ``i``
(q2rec and eta are correlated: harder kaons, lower q2rec, higher eta; so each q2rec bin has
its own shape), and ``r_i`` the closure correction of the row (below). The shape is a power
law ``(1 - eta)^k``: eta is the signal-efficiency transform of BDT2, signal is flat in it and
the background density vanishes towards eta = 1.

The correction is the method moved down (:func:`sideband_correction`): in seven windows, the
signal region's geometry (fit on 0.8-1, predict its top 0.92-1 in four rows) moved down by 0.2
to 0.08 in steps of 0.02 (0.6-0.8 with its top 0.72-0.8, ..., 0.72-0.92 with 0.84-0.92), the
same power law predicts the window's top rows; filled over predicted, summed over a channel's
samples and q2rec bins, is the window's ratio, and their mean is ``r_i``. The shape systematic
``delta_i`` is how far it moves with the window (the windows' standard deviation) and its MC
error, in quadrature. On the measurement config's MC (seeds 20231114 / 7, on and off
resonance) r is 0.99 / 1.02 / 1.06 / 1.15 and 0.98 / 1.02 / 1.07 / 1.14 (delta 0.04 / 0.05 /
0.05 / 0.08 and 0.04 / 0.05 / 0.06 / 0.06): the power law is low in the top rows (its local
power falls towards eta = 1) by the same amount in every window and on both seeds. One window
alone (0.6-0.8, stop 53) gave 1.03 / 1.07 / 1.10 / 1.18 and 0.93 / 1.05 / 1.15 / 1.17: its
rows' MC noise. Stop 53 took the correction's distance from 1 as its systematic: a ramp of
0.04 to 0.17 that follows the signal's S/B over the rows (its impact on the ITA's sigma 3.2 on
seed 20231114, 1.3 on seed 7 with the seven windows); the windows measure how far the
correction carries, so the systematic is theirs. In the signal region itself, filled event by
event over the power law was 1.06 / 1.00 / 1.12 / 1.31 and 0.96 / 1.14 / 1.07 / 1.10 (+- 0.06-0.17).
An exponential, the alternative shape tried until stop 52, closes in the sideband but puts
2.5-3x the filled background into the top row.

The closure of each sample against its filled template is tested (:func:`closure`, and
:func:`sideband_closure` per sample). The MC statistical uncertainty per bin comes from
Gaussian replicas of the loose histogram (each bin moved within its sum of squared weights),
refitted.

The loose histogram is the ITA processor's ``ita_loose`` (eta 0.5-1 in 50 bins x the fit's
q2rec bins, every variation).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import optimize

log = logging.getLogger(__name__)

#: The loose histogram's eta axis (ITA processor, ``ita_loose``).
LOOSE_EDGES = np.linspace(0.5, 1.0, 51)
#: Fewer effective loose events than this: the sample's template stays as filled.
MIN_EFFECTIVE = 5.0
#: A q2rec bin with fewer effective loose events takes the eta shape of all q2rec bins.
MIN_COLUMN = 25.0
#: The principal components of the replicas kept: those that make this fraction of their
#: summed variance.
COMPONENTS_FRACTION = 0.9999


class Correction(NamedTuple):
    """Per fit eta row: the power law's closure one step down and the systematic it sizes.

    ``ratio`` multiplies the power law's template (filled over predicted in the sidebands,
    their mean); ``error`` is the systematic: the sidebands' spread and the ratio's MC error in
    quadrature.
    """

    ratio: np.ndarray
    error: np.ndarray
    #: Each sideband window's ratio (windows x rows), when measured.
    windows: np.ndarray | None = None


class Factorised(NamedTuple):
    """A factorised template (the fit's eta bins x q2rec bins) and what it rests on."""

    values: np.ndarray  # the power law's template x the closure correction
    variances: np.ndarray
    up: np.ndarray  # the power law's template x (ratio + error): the systematic's up
    down: np.ndarray  # x (ratio - error), at least 0: its down
    slope: float  # the power law's k, all q2rec bins together
    loose_effective: float  # (sum w)^2 / sum w^2 of the loose events
    mean_weight: float  # sum w^2 / sum w of the loose events (an event's typical weight)
    loose: float  # the loose eta cut it was fitted above
    #: The replicas' covariance as principal components (K x eta bins x q2rec bins, each
    #: sqrt(eigenvalue) x eigenvector, largest first): the MC statistical uncertainty with its
    #: correlations (a fitted slope moves every row together); none without replicas.
    components: np.ndarray | None = None


def _fractions(edges: np.ndarray, lo: float, hi: float, k: float) -> np.ndarray:
    """Fractions of the density ``(1 - x)^k`` on [lo, hi] (hi <= 1, k > -1) in ``edges``."""
    edges = np.asarray(edges, dtype=float)
    cdf = -((1.0 - edges) ** (k + 1.0))
    return np.diff(cdf) / (-((1.0 - hi) ** (k + 1.0)) + (1.0 - lo) ** (k + 1.0))


#: The power's range.
_BOUNDS = (-0.99, 100.0)


def fit_slope(counts: np.ndarray, edges: np.ndarray) -> float:
    """Weighted maximum-likelihood power ``k`` of ``(1 - x)^k`` fitted to binned counts.

    >>> edges = np.linspace(0.75, 1.0, 26)
    >>> round(fit_slope(1e6 * _fractions(edges, 0.75, 1.0, 1.5), edges), 3)
    1.5
    """
    lo, hi = float(edges[0]), float(edges[-1])
    total = float(counts.sum())

    def nll(k: float) -> float:
        p = _fractions(edges, lo, hi, k)
        return -float(np.sum(counts * np.log(np.clip(p, 1e-300, None)))) / total

    res = optimize.minimize_scalar(nll, bounds=_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(res.x)


def _template(
    values: np.ndarray,
    variances: np.ndarray,
    loose_edges: np.ndarray,
    eta_edges: np.ndarray,
    loose: float,
) -> tuple[np.ndarray, float]:
    """Per q2rec bin: its loose events x the fitted power law's fractions; the pooled power.

    A q2rec bin with fewer than :data:`MIN_COLUMN` effective loose events takes the power
    fitted to all q2rec bins together.
    """
    rows = loose_edges[:-1] >= loose - 1e-9
    sub, sub_var = values[rows], variances[rows]
    edges = loose_edges[np.concatenate([rows, [True]])]
    lo, hi = float(edges[0]), float(edges[-1])
    out = np.zeros((len(eta_edges) - 1, values.shape[1]))
    if sub.sum() <= 0:
        return out, 0.0
    pooled = fit_slope(sub.sum(axis=1), edges)
    for j in range(values.shape[1]):
        n, n2 = float(sub[:, j].sum()), float(sub_var[:, j].sum())
        if n <= 0:
            continue
        k = fit_slope(sub[:, j], edges) if n * n >= MIN_COLUMN * n2 else pooled
        out[:, j] = n * _fractions(eta_edges, lo, hi, k)
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
    correction: Correction | None = None,
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
        correction: Per fit eta row, the closure correction and its systematic
            (:func:`sideband_correction`: four rows, as the fit has); without it, none (and
            up = down = values).

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
    n_rows = len(eta_edges) - 1
    ratio, error = (np.ones(n_rows), np.zeros(n_rows)) if correction is None else correction[:2]
    if len(ratio) != n_rows:
        raise ValueError(f"a correction of {len(ratio)} eta rows for a template of {n_rows}")
    ratio, error = np.asarray(ratio)[:, None], np.asarray(error)[:, None]
    power, k = _template(values, variances, loose_edges, eta_edges, loose)
    up, down = power * (ratio + error), power * np.clip(ratio - error, 0.0, None)
    nominal = power * ratio
    mean_weight = s2 / s
    if replicas < 1:
        return Factorised(
            nominal, np.zeros_like(nominal), up, down, k, effective, mean_weight, loose
        )
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.clip(variances, 0.0, None))
    draws = np.empty((replicas, *nominal.shape))
    for r in range(replicas):
        moved = np.clip(values + sigma * rng.standard_normal(values.shape), 0.0, None)
        draws[r] = _template(moved, variances, loose_edges, eta_edges, loose)[0] * ratio
    return Factorised(
        nominal, draws.var(axis=0), up, down, k, effective, mean_weight, loose, _components(draws)
    )


def _components(draws: np.ndarray, fraction: float = COMPONENTS_FRACTION) -> np.ndarray:
    """The principal components of replicas (n x shape) that make ``fraction`` of their variance.

    Each is sqrt(eigenvalue) x eigenvector of the replicas' covariance, so the sum of their
    outer products is that covariance, less what the dropped components held.

    >>> rng = np.random.default_rng(1)
    >>> slope = rng.standard_normal(4000)[:, None] * np.array([1.0, 2.0, 3.0])  # one direction
    >>> c = _components(slope)
    >>> c.shape, np.round(np.abs(c[0]), 1).tolist()
    ((1, 3), [1.0, 2.0, 3.0])
    """
    flat = draws.reshape(len(draws), -1)
    values, vectors = np.linalg.eigh(np.atleast_2d(np.cov(flat.T)))
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
    if values.sum() <= 0:
        return np.zeros((0, *draws.shape[1:]))
    keep = int(np.searchsorted(np.cumsum(values) / values.sum(), fraction - 1e-12) + 1)
    return (vectors[:, :keep] * np.sqrt(values[:keep])).T.reshape(keep, *draws.shape[1:])


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


#: The sideband: the power law fitted on (lo, hi) predicts (top, hi) in four rows (the signal
#: region's geometry, 0.8 / 0.92 / 1, moved down by 0.2; :func:`sideband_closure` per sample).
SIDEBAND = (0.6, 0.72, 0.8)
#: The sidebands the correction averages: that geometry moved down by 0.08 to 0.2 in steps of
#: 0.02 (one loose bin is 0.01), the highest ending where the signal region begins.
SIDEBANDS = tuple(
    (round(0.6 + d, 2), round(0.72 + d, 2), round(0.8 + d, 2)) for d in np.arange(0, 0.121, 0.02)
)


def _sideband(
    values: np.ndarray,
    variances: np.ndarray,
    loose_edges: np.ndarray = LOOSE_EDGES,
    window: tuple[float, float, float] = SIDEBAND,
) -> tuple[np.ndarray, np.ndarray, Factorised | None]:
    """The sideband's four rows filled (values, variances) and the power law's prediction."""
    lo, top, hi = window
    rows = (loose_edges[:-1] >= lo - 1e-9) & (loose_edges[1:] <= hi + 1e-9)
    edges = loose_edges[np.concatenate([rows, [False]]) | np.concatenate([[False], rows])]
    inside = np.array_split(np.flatnonzero(rows & (loose_edges[:-1] >= top - 1e-9)), 4)
    filled = np.array([values[g].sum(axis=0) for g in inside])
    filled_var = np.array([variances[g].sum(axis=0) for g in inside])
    if values[rows].sum() <= 0 or variances[rows].sum() <= 0:
        return filled, filled_var, None
    target = np.linspace(top, hi, 5)
    made = factorise(values[rows], variances[rows], target, lo, 0, loose_edges=edges)
    return filled, filled_var, made


def sideband_closure(
    values: np.ndarray, variances: np.ndarray, loose_edges: np.ndarray = LOOSE_EDGES
) -> Closure:
    """The method one step down, where the MC has more events, for one sample.

    The signal-region template fits eta 0.8-1 and predicts its top 0.92-1 in four bins; here
    the same is done on (lo, top, hi) = :data:`SIDEBAND`, per q2rec bin, and compared with what
    was filled there.
    """
    filled, _, made = _sideband(values, variances, loose_edges)
    if made is None:
        return Closure(float("nan"), 0, float("nan"))
    return closure(filled, made.values, made.variances, made.mean_weight)


def sideband_correction(
    histograms: Iterable[tuple[np.ndarray, np.ndarray]],
    loose_edges: np.ndarray = LOOSE_EDGES,
    windows: Sequence[tuple[float, float, float]] = SIDEBANDS,
) -> Correction:
    """The closure correction of a channel's factorised templates, per fit eta row.

    In each sideband window (:data:`SIDEBANDS`) every loose histogram (values, variances) is
    fitted and its top four rows predicted; filled and predicted are summed over the
    histograms and q2rec bins, row by row, and their ratio is that window's correction. The
    correction is the mean over the windows. Its error, the systematic, is the windows' spread
    (their standard deviation: how far the correction moves when the window does) and its MC
    error (the windows' mean relative error of the filled rows: they share events, so it is
    not divided down) in quadrature. No sideband events: none.

    >>> edges = np.linspace(0.5, 1.0, 51)
    >>> exact = 1e6 * _fractions(edges, 0.5, 1.0, 1.5)[:, None]
    >>> c = sideband_correction([(exact, exact / 1e6)], edges)
    >>> np.round(c.ratio, 4).tolist(), bool(np.all(c.error < 3e-3)), c.windows.shape
    ([1.0, 1.0, 1.0, 1.0], True, (7, 4))
    """
    histograms = list(histograms)
    ratios, errors = [], []
    for window in windows:
        filled, filled_var, predicted = np.zeros(4), np.zeros(4), np.zeros(4)
        for values, variances in histograms:
            f, fv, made = _sideband(values, variances, loose_edges, window)
            if made is not None:
                filled += f.sum(axis=1)
                filled_var += fv.sum(axis=1)
                predicted += made.values.sum(axis=1)
        if np.any(predicted <= 0):
            continue
        ratios.append(filled / predicted)
        errors.append(np.sqrt(filled_var) / predicted)
    if not ratios:
        log.warning("factorisation: no sideband events for the closure correction; none applied")
        return Correction(np.ones(4), np.zeros(4))
    each = np.array(ratios)
    ratio = each.mean(axis=0)
    spread = each.std(axis=0, ddof=1) if len(each) > 1 else np.zeros(4)
    error = np.hypot(spread, np.mean(errors, axis=0))
    return Correction(ratio, error, each)
