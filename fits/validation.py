"""The statistics of the validation checks: projections, injection, splits, efficiencies.

What each check computes from workspaces and histograms, as functions of them; the run-level
suite that reads a run directory, writes ``<run>/validation/`` and the report's lines is
:mod:`knunu.validation`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyhf

from knunu.errors import FitError, InputError
from knunu.fits.build import CHANNELS
from knunu.fits.infer import MAX_FAILED_TOY_FRACTION, Likelihood
from knunu.fits.workspace import analyses_in, select
from knunu.samples import BBBAR

log = logging.getLogger(__name__)

#: POI range of the injection and split fits: wide enough that fits of mu_true <= 10 do not
#: meet a bound (the lower one is raised where a bin's expectation would turn negative).
INJECTION_BOUNDS = (-10.0, 30.0)
#: The share of its nominal background the purest bin keeps at the lowest mu allowed: the
#: edge of the likelihood's domain (a yield of 0), kept off it. Until stop 56 the bound sat
#: half-way to the edge, and it was the injection's bias: on the measurement config's
#: combined model (seed 20231114, stop 55; bound -1.67) 55 of 200 toys at mu = 0 stopped on
#: it, which lifted their mean to +0.26 and made the slope 0.952 +- 0.024; with this bound
#: (-3.18) 15 do, the mean is +0.01 +- 0.16 and the slope 0.978 +- 0.025.
KEEP_AT_BOUND = 0.05


def scaled_spec(spec: dict[str, Any], factor: float | Mapping[str, float]) -> dict[str, Any]:
    """A workspace spec with every template scaled by ``factor`` (more luminosity).

    Yields and their up/down variations scale with ``factor``; the MC statistical uncertainty
    (absolute) with ``sqrt(factor)``, as for MC samples ``factor`` times larger. Observations
    are kept (callers replace them by pseudo-data). ``factor``: one for every channel, or one
    per channel name (on- and off-resonance data of different luminosities).

    >>> spec = {"channels": [{"name": "c", "samples": [{"name": "s", "data": [4.0],
    ...     "modifiers": [{"name": "e", "type": "staterror", "data": [2.0]}]}]}]}
    >>> s = scaled_spec(spec, 4.0)["channels"][0]["samples"][0]
    >>> s["data"], s["modifiers"][0]["data"]
    ([16.0], [4.0])
    >>> scaled_spec(spec, {"c": 9.0})["channels"][0]["samples"][0]["data"]
    [36.0]
    """
    out = copy.deepcopy(spec)
    for channel in out["channels"]:
        f = factor[channel["name"]] if isinstance(factor, Mapping) else factor
        _scale_channel(channel, f)
    return out


def _scale_channel(channel: dict[str, Any], factor: float) -> None:
    """Scale one channel's templates in place (see :func:`scaled_spec`)."""
    root = math.sqrt(factor)
    for sample in channel["samples"]:
        sample["data"] = [factor * v for v in sample["data"]]
        for mod in sample["modifiers"]:
            if mod["type"] == "staterror":
                mod["data"] = [root * v for v in mod["data"]]
            elif mod["type"] == "histosys":
                mod["data"] = {k: [factor * v for v in vals] for k, vals in mod["data"].items()}


def resonance_factors(spec: dict[str, Any], on: float, off: float) -> dict[str, float]:
    """Per channel of ``spec``: ``off`` for the off-resonance channels, ``on`` for the others.

    >>> resonance_factors({"channels": [{"name": "ita_on_sr"}, {"name": "ita_off_cr"},
    ...     {"name": "hta_sr"}]}, 2.0, 3.0)
    {'ita_on_sr': 2.0, 'ita_off_cr': 3.0, 'hta_sr': 2.0}
    """
    return {c["name"]: off if off_resonance(c["name"]) else on for c in spec["channels"]}


def off_resonance(channel: str) -> bool:
    """Whether a fit channel holds off-resonance data (:data:`knunu.fits.build.CHANNELS`)."""
    layout = CHANNELS.get(channel)
    return layout is not None and layout.histogram == "ita_off"


def with_poi_bounds(spec: dict[str, Any], bounds: tuple[float, float]) -> dict[str, Any]:
    """The spec with the POI's bounds set in its measurement."""
    out = copy.deepcopy(spec)
    config = out["measurements"][0]["config"]
    params = [p for p in config.get("parameters", []) if p["name"] != config["poi"]]
    params.append({"name": config["poi"], "bounds": [list(bounds)]})
    config["parameters"] = params
    return out


def poi_range(spec: dict[str, Any], wanted: tuple[float, float] = INJECTION_BOUNDS) -> tuple:
    """``wanted``, its lower end raised to where a bin keeps :data:`KEEP_AT_BOUND` of its yield.

    The domain of mu ends where a bin's nominal yield turns negative; the bound stays just
    inside it, so the lower tail of the fitted mu is not clipped (a clipped tail biases the
    mean of the fitted mu upwards: the signal injection's slope).

    >>> spec = {"channels": [{"name": "c", "samples": [
    ...     {"name": "signal", "data": [1.0, 2.0], "modifiers": []},
    ...     {"name": "b", "data": [4.0, 2.0], "modifiers": []}]}]}
    >>> poi_range(spec)
    (-0.95, 30.0)
    """
    lower = wanted[0]
    for channel in spec["channels"]:
        signal = np.zeros(0)
        background = 0.0
        for sample in channel["samples"]:
            data = np.asarray(sample["data"], dtype=float)
            if sample["name"] == "signal":
                signal = data
            else:
                background = background + data
        if not signal.size:  # a channel without signal (off resonance) bounds nothing
            continue
        background = np.broadcast_to(background, signal.shape)
        has = signal > 0
        if has.any():
            edge = float(np.max(-background[has] / signal[has]))
            lower = max(lower, (1.0 - KEEP_AT_BOUND) * edge)
    return (lower, wanted[1])


def nominal_point(lh: Likelihood, mu: float) -> np.ndarray:
    """The model's nominal parameters with the POI at ``mu``."""
    x = np.array(lh.init, dtype=float)
    x[lh.poi] = mu
    return x


def asimov_sigma(lh: Likelihood, mu: float) -> float:
    """Expected (Hesse) uncertainty of mu on the Asimov data of the nominal model at ``mu``."""
    asimov = lh.with_data(lh.expected_data(nominal_point(lh, mu)))
    best = asimov.fit(init=nominal_point(lh, mu))
    return float(asimov.uncertainties(best).error[lh.poi])


class Projection(NamedTuple):
    """Expected sigma(mu) per model at the run's luminosity and at the projected one."""

    mu: float
    luminosity_fb: float
    projected_luminosity_fb: float
    sigma: dict[str, float]
    sigma_projected: dict[str, float]


def projection(
    spec: dict[str, Any],
    mu: float,
    luminosity_fb: float,
    target_fb: float,
    factor: float | Mapping[str, float] | None = None,
) -> Projection:
    """Expected sigma(mu) of each model of ``spec`` here and scaled to ``target_fb``.

    ``factor``: the scaling of the templates (per channel, e.g. :func:`resonance_factors`
    where the off-resonance data have a luminosity of their own); default target / here.
    """
    factor = target_fb / luminosity_fb if factor is None else factor
    here, there = {}, {}
    big = pyhf.Workspace(scaled_spec(spec, factor))
    small = pyhf.Workspace(spec)
    for analysis in analyses_in(small):
        here[analysis] = asimov_sigma(Likelihood.from_workspace(select(small, analysis)), mu)
        there[analysis] = asimov_sigma(Likelihood.from_workspace(select(big, analysis)), mu)
    return Projection(mu, luminosity_fb, target_fb, here, there)


class Injection(NamedTuple):
    """Fitted mu of pseudo-experiments against the injected mu_true."""

    mu_true: tuple[float, ...]
    mean: tuple[float, ...]
    error: tuple[float, ...]  # of the mean
    width: tuple[float, ...]  # standard deviation of the fitted mu
    slope: float
    slope_error: float
    intercept: float
    intercept_error: float
    chi2: float
    ndf: int
    failed: int  # fits that did not converge (left out, counted)
    #: per mu_true, the fits that stopped on the POI's lower bound (a clipped lower tail
    #: lifts the mean: :data:`KEEP_AT_BOUND`)
    at_bound: tuple[int, ...] = ()


def at_bound_text(at_bound: Sequence[int]) -> str:
    """The injection's fits on the lower bound of mu, for a report line ('' when none).

    >>> at_bound_text([15, 18, 3, 1, 0])
    ', fits on the lower bound of mu: 15 / 18 / 3 / 1 / 0 per injected mu'
    >>> at_bound_text([0, 0])
    ''
    """
    if not any(at_bound):
        return ""
    return f", fits on the lower bound of mu: {' / '.join(map(str, at_bound))} per injected mu"


def line_fit(
    x: np.ndarray, y: np.ndarray, err: np.ndarray
) -> tuple[float, float, float, float, float]:
    """Weighted least-squares line: (slope, its error, intercept, its error, chi2).

    >>> s, ds, b, db, chi2 = line_fit(np.array([0.0, 1, 2]), np.array([1.0, 3, 5]), np.ones(3))
    >>> round(s, 6), round(b, 6), round(chi2, 6)
    (2.0, 1.0, 0.0)
    """
    w = 1.0 / np.asarray(err, dtype=float) ** 2
    design = np.column_stack([x, np.ones_like(x)])
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    slope, intercept = cov @ (design.T @ (w * y))
    chi2 = float(np.sum(w * (y - slope * x - intercept) ** 2))
    return (
        float(slope),
        float(math.sqrt(cov[0, 0])),
        float(intercept),
        float(math.sqrt(cov[1, 1])),
        chi2,
    )


def injection(lh: Likelihood, mus: Sequence[float], toys: int, seed: int) -> Injection:
    """Fit ``toys`` pseudo-experiments (main and auxiliary data) at each injected mu.

    Raises:
        FitError: more than :data:`~knunu.fits.infer.MAX_FAILED_TOY_FRACTION` of the fits at
            one mu fail to converge.
    """
    means, errors, widths, at_bound, failed = [], [], [], [], 0
    lower = lh.bounds[lh.poi][0]
    for k, mu in enumerate(mus):
        x0 = nominal_point(lh, mu)
        fits = lh.fit_many(lh.sample(x0, toys, seed + k), init=x0)
        for j in fits.failed:
            log.warning("injection toy %d at mu = %g left out: no fit strategy converged", j, mu)
        failed += len(fits.failed)
        fitted = [fits.x[j, lh.poi] for j in range(toys) if j not in fits.failed]
        if toys - len(fitted) > MAX_FAILED_TOY_FRACTION * toys:
            raise FitError(f"signal injection at mu = {mu:g}: {toys - len(fitted)} fits failed")
        values = np.asarray(fitted)
        at_bound.append(int(np.sum(values <= lower + 1e-6 * max(1.0, abs(lower)))))
        means.append(float(values.mean()))
        widths.append(float(values.std(ddof=1)))
        errors.append(widths[-1] / math.sqrt(len(values)))
    x = np.asarray(mus, dtype=float)
    slope, ds, intercept, di, chi2 = line_fit(x, np.asarray(means), np.asarray(errors))
    return Injection(
        tuple(map(float, mus)),
        tuple(means),
        tuple(errors),
        tuple(widths),
        slope,
        ds,
        intercept,
        di,
        chi2,
        len(mus) - 2,
        failed,
        tuple(at_bound),
    )


#: The consistency splits: pairs of statistically independent halves (processor ``SPLITS``).
SPLIT_PAIRS = (("kplus", "kminus"), ("even", "odd"), ("nolepton", "lepton"))
SPLIT_LABELS = {
    "kplus": "K+",
    "kminus": "K-",
    "even": "even event numbers",
    "odd": "odd event numbers",
    "nolepton": "no lepton",
    "lepton": ">= 1 lepton",
}


class SplitFit(NamedTuple):
    """The ITA fit of one half of the data."""

    split: str
    mu: float
    error: float
    at_bound: bool
    left_out: float = 0.0  # events of channels without any MC in this half (not fitted)


class SplitPair(NamedTuple):
    """Two independent halves and how well their mu agree."""

    halves: tuple[SplitFit, SplitFit]
    chi2: float  # (mu1 - mu2)^2 / (err1^2 + err2^2), one degree of freedom
    p_value: float


def split_fits(histograms: Path) -> list[SplitPair]:
    """Fit the ITA model of each half of :data:`SPLIT_PAIRS` alone; compare the pairs.

    Each half's model is built from its own data and templates with the normalisation
    systematics and the MC statistical uncertainty (shape variations are not split).
    """
    from scipy import stats

    from knunu.fits.build import HistogramFile, build_spec_and_bins
    from knunu.fits.catalogue import load_catalogue

    norms = tuple(r for r in load_catalogue() if r.type == "normsys")
    hfile = HistogramFile(histograms)
    try:
        built = {
            half: build_spec_and_bins(hfile, "ita", norms, split=half)
            for pair in SPLIT_PAIRS
            for half in pair
        }
    finally:
        hfile.close()
    pairs = []
    for pair in SPLIT_PAIRS:
        fits = []
        for half in pair:
            spec, described = built[half]
            bounds = poi_range(spec)
            lh = Likelihood.from_workspace(pyhf.Workspace(with_poi_bounds(spec, bounds)))
            best = lh.fit()
            mu = float(best.x[lh.poi])
            err = float(lh.uncertainties(best).error[lh.poi])
            at_bound = bool(np.isclose(mu, bounds).any())
            left_out = sum(d.get("left_out", 0.0) for d in described.values())
            fits.append(SplitFit(half, mu, err, at_bound, left_out))
        chi2 = (fits[0].mu - fits[1].mu) ** 2 / (fits[0].error ** 2 + fits[1].error ** 2)
        pairs.append(SplitPair((fits[0], fits[1]), chi2, float(stats.chi2.sf(chi2, 1))))
    return pairs


class Efficiency(NamedTuple):
    """Signal-region efficiency in bins of q2gen (of all produced signal in the bin)."""

    analysis: str
    edges: tuple[float, ...]
    efficiency: tuple[float, ...]
    error: tuple[float, ...]
    total: float  # over every q2gen


def spectrum_fractions(edges: Sequence[float]) -> np.ndarray:
    """Fraction of the SM signal q2 spectrum (what the generator samples) in each bin."""
    from knunu.simulation.signal import Q2_MAX, branching_fraction

    total = branching_fraction()
    return np.array(
        [
            branching_fraction(lo, min(hi, Q2_MAX)) / total if lo < Q2_MAX else 0.0
            for lo, hi in itertools.pairwise(edges)
        ]
    )


def efficiencies(histograms: Path, produced: float) -> list[Efficiency]:
    """ITA and HTA signal efficiency versus q2gen from the processors' q2gen histograms.

    The denominator of a bin is the produced signal times the fraction of the SM spectrum
    (:func:`knunu.simulation.signal.differential_bf`, what the generator samples) in the bin.
    """
    import uproot

    out = []
    with uproot.open(histograms) as f:
        for analysis in ("ita", "hta"):
            key = f"{analysis}_q2gen_signal_nominal"
            if key not in f:
                continue
            h = f[key]
            edges = np.asarray(h.axis().edges())
            num, var = h.values(), h.variances()
            frac = spectrum_fractions(edges)
            den = produced * frac
            ok = den > 0
            eff = np.where(ok, num / np.where(ok, den, 1.0), 0.0)
            err = np.where(ok, np.sqrt(var) / np.where(ok, den, 1.0), 0.0)
            out.append(
                Efficiency(
                    analysis,
                    tuple(edges.tolist()),
                    tuple(eff.tolist()),
                    tuple(err.tolist()),
                    float(num.sum() / produced),
                )
            )
    return out


class Embedding(NamedTuple):
    """ITA signal-region efficiency of embedded signal in data and of the signal MC."""

    data: float
    data_error: float
    mc: float
    mc_error: float
    ratio: float
    ratio_error: float


def embedding(eff_mc: Efficiency, selected: float, events: float) -> Embedding:
    """Data/MC ratio of the signal efficiency: ``selected`` of ``events`` embedded events.

    >>> mc = Efficiency("ita", (0.0, 24.0), (0.08,), (0.001,), 0.08)
    >>> round(embedding(mc, 800, 10000).ratio, 6)
    1.0
    """
    data = selected / events
    data_error = math.sqrt(data * (1.0 - data) / events)
    mc = eff_mc.total
    # the total's error: the bins' errors weighted by the spectrum fractions they were scaled by
    frac = spectrum_fractions(eff_mc.edges)
    mc_error = float(np.sqrt(np.sum((np.asarray(eff_mc.error) * frac) ** 2)))
    ratio = data / mc
    return Embedding(
        data,
        data_error,
        mc,
        mc_error,
        ratio,
        ratio * math.hypot(data_error / data, mc_error / mc),
    )


class Composition(NamedTuple):
    """What fills the ITA signal region (eta > 0.92, on resonance), pre-fit at mu = 1.

    Attributes:
        scale: The factor the yields at the data luminosity are multiplied by (target over
            data luminosity).
        yields: Events per sample (signal and each background).
        effective: Effective MC events per sample, (sum w)^2 / sum w^2 (library reuse known).
        s_over_b: Signal over background, for eta > 0.92 and for eta > 0.98.
        bbbar_classes: Shares of the B Bbar weight (both samples) by class, and their
            effective MC events (sum w^2 alone): (share, effective events).
        shapes: Per sample, its yield's fractions (eta rows, q2rec columns), shape (4, 3):
            eta(BDT2) 0.92 / 0.94 / 0.96 / 0.98 / 1 by q2rec -1 / 4 / 8 / 25 GeV^2.
    """

    scale: float
    yields: dict[str, float]
    effective: dict[str, float]
    s_over_b: dict[str, float]
    bbbar_classes: dict[str, tuple[float, float]]
    shapes: dict[str, np.ndarray]


#: The published likelihood's ITA on-resonance channels (HEPData names' first letter): the
#: control row eta(BDT2) 0.92-0.94 and the signal region's three rows above, 3 q2rec bins each.
PUBLISHED_ITA_ON = ("B__", "A__")


def published_shapes() -> dict[str, np.ndarray]:
    """The published pre-fit ITA templates on resonance, as (eta rows, q2rec columns) yields.

    Shape (4, 3) per sample, as :attr:`Composition.shapes` is binned (there: fractions).

    >>> shapes = published_shapes()
    >>> shapes["signal"].shape, [round(float(r)) for r in shapes["signal"].sum(axis=1)]
    ((4, 3), [40, 40, 40, 40])
    """
    from knunu.fits.workspace import load_workspace, published_workspace_path

    workspace = load_workspace(published_workspace_path())
    rows: dict[str, list[np.ndarray]] = {}
    for prefix in PUBLISHED_ITA_ON:
        (channel,) = (c for c in workspace["channels"] if c["name"].startswith(prefix))
        for sample in channel["samples"]:
            rows.setdefault(sample["name"], []).append(np.reshape(sample["data"], (-1, 3)))
    return {name: np.concatenate(parts) for name, parts in rows.items()}


#: B Bbar classes of the signal region: the decay mode of either B (its code in
#: knunu.simulation.bdecays.MODES; the processors count an event once per mode).
BBBAR_CLASSES = {"D(*) l nu": 1, "D** l nu": 2, "D(*) K+": 5, "D(*) pi+": 6}


def composition(histograms: Path, scale: float, samples: Sequence[str]) -> Composition:
    """The ITA signal region's composition from a run's histogram file.

    Args:
        histograms: The processors' histogram file (``ita_on_*`` fit histograms, at the
            data's luminosity, and ``ita_on_modes_*`` for the B Bbar classes).
        scale: Target over data luminosity (the yields are multiplied by it).
        samples: The fit samples, signal first (those the file holds are counted).

    Raises:
        InputError: the file holds no signal template.
    """
    import uproot

    yields, effective, top, shapes = {}, {}, {}, {}
    with uproot.open(histograms) as f:
        keys = {k.split(";")[0] for k in f.keys(cycle=True)}
        if f"ita_on_{samples[0]}_nominal" not in keys:
            raise InputError(f"{histograms}: no ita_on_{samples[0]}_nominal to compare with")
        for sample in (s for s in samples if f"ita_on_{s}_nominal" in keys):
            h = f[f"ita_on_{sample}_nominal"].to_hist()
            w, w2 = h.values(), h.variances()
            yields[sample] = float(w.sum() * scale)
            top[sample] = float(w[-1].sum() * scale)  # the last eta row: 0.98-1
            shapes[sample] = w / w.sum() if w.sum() > 0 else np.full(w.shape, np.nan)
            effective[sample] = float(w.sum() ** 2 / w2.sum()) if w2.sum() > 0 else 0.0
        modes = [f[f"ita_on_modes_{s}_nominal"].to_hist() for s in BBBAR
                 if f"ita_on_modes_{s}_nominal" in keys]  # fmt: skip
    background = sum(v for k, v in yields.items() if k != samples[0])
    rest = sum(v for k, v in top.items() if k != samples[0])
    s_over_b = {
        "eta > 0.92": yields[samples[0]] / background if background > 0 else math.nan,
        "eta > 0.98": top[samples[0]] / rest if rest > 0 else math.nan,
    }
    return Composition(scale, yields, effective, s_over_b, _classes(modes), shapes)


def _classes(modes: list[Any]) -> dict[str, tuple[float, float]]:
    """(share, effective MC events) of each B Bbar class, and of events with a K_L in them."""
    if not modes:
        return {}
    axis = list(modes[0].axes[0])
    w = sum(np.asarray(h.values()) for h in modes)
    w2 = sum(np.asarray(h.variances()) for h in modes)
    every = axis.index(-1)
    total = w[every].sum()
    cells = {name: (axis.index(code), slice(None)) for name, code in BBBAR_CLASSES.items()}
    cells["a K_L in the event"] = (every, 1)  # every event once, the K_L column
    out = {}
    for name, cell in cells.items():
        sw, sw2 = float(np.sum(w[cell])), float(np.sum(w2[cell]))
        out[name] = (sw / total if total > 0 else math.nan, sw**2 / sw2 if sw2 > 0 else 0.0)
    return out
