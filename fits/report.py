"""The standard results of a workspace (fit, MINOS, significances, limit) as JSON + Markdown."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from knunu import published
from knunu.errors import LimitAboveBoundError
from knunu.fits import plots
from knunu.fits.build import load_bins
from knunu.fits.infer import (
    FitResult,
    GoodnessOfFit,
    Impact,
    Likelihood,
    Ranking,
    Uncertainties,
    goodness_of_fit,
    impacts,
    significance,
    upper_limit,
)
from knunu.fits.workspace import analyses_in, load_workspace, published_workspace_path, select
from knunu.rundir import save_figure, sha256, write_json, write_text

log = logging.getLogger(__name__)

#: B(B+ -> K+ nu nubar) at mu = 1 (SM short distance, HPQCD 2022 form factor).
BF_SM = 4.97e-6

#: The published numbers (reference README; pyhf + Minuit with default tolerance).
PUBLISHED = published.FIT


@dataclass(frozen=True)
class AnalysisResult:
    """Inference results of one model (ITA, HTA or combined)."""

    analysis: str
    n_parameters: int
    mu: float
    mu_hesse: float
    minos_down: float
    minos_up: float
    stat: float
    syst: float
    z_bkg: float
    z_sm: float
    upper_limit: float | None  # None: above the POI's upper bound (limit_bound)
    cl: float
    branching_fraction: float
    nll: float
    fit_method: str
    seconds: float
    gof_p_value: float | None = None
    gof_toys: int = 0
    gof_failed: int = 0  # toys whose fit did not converge, left out of the p-value
    limit_bound: float = 10.0  # the POI's upper bound
    impacts: tuple[tuple[str, float, float], ...] = ()  # (name, up, down), largest first
    pulls: tuple[tuple[str, float, float], ...] = ()  # (name, pull, post-fit error / prior)
    impacts_failed: tuple[str, ...] = ()  # parameters whose impact refit failed (left out)
    blinded: bool = False  # mu and what follows from it (MINOS, B, Z, limit, NLL) not computed


@dataclass(frozen=True)
class FitSummary:
    """What :func:`fit_workspace_file` produced."""

    results: tuple[AnalysisResult, ...]
    markdown: str
    directory: Path
    is_published: bool


class Inference(NamedTuple):
    """An :class:`AnalysisResult` with the fit objects behind it (for plots)."""

    result: AnalysisResult
    best: FitResult
    uncertainties: Uncertainties
    impacts: tuple[Impact, ...]
    gof: GoodnessOfFit | None = None


def analyse(
    lh: Likelihood,
    analysis: str,
    cls_level: float = 0.9,
    *,
    with_impacts: bool = False,
    toys: int = 0,
    seed: int = 0,
    blind: bool = False,
) -> Inference:
    """Run the standard inference on one compiled likelihood.

    Blind, only the pulls, correlations and goodness of fit are computed; mu and what depends
    on it (its uncertainties, MINOS interval, B, significances, limit, NLL, impacts: each
    impact is a shift of the fitted mu, and one on the signal alone is proportional to it) are
    not: they are NaN (the limit None, no impacts) and the result says ``blinded``. Expected
    uncertainties and impacts come from Asimov data (:mod:`knunu.measurement`).

    Args:
        lh: The compiled likelihood.
        analysis: Its name in the results.
        cls_level: Confidence level of the CLs upper limit.
        with_impacts: Also rank every nuisance parameter by its post-fit impact on mu.
        toys: Pseudo-experiments for the saturated-model goodness of fit (0: none).
        seed: Seed of the pseudo-experiments.
        blind: Hide mu and what follows from it (the data's mu_true is not to be seen yet).
    """
    start = time.perf_counter()
    best = lh.fit()
    unc = lh.uncertainties(best)
    poi = lh.poi
    of_mu = _of_mu(lh, best, _errors_of_mu(lh, best, unc), cls_level, blind)
    ranking = impacts(lh, best, unc) if with_impacts and not blind else Ranking(())
    gof = goodness_of_fit(lh, best, toys, seed) if toys else None
    result = AnalysisResult(
        analysis=analysis,
        n_parameters=lh.npars,
        **of_mu,
        limit_bound=float(lh.bounds[poi][1]),
        cl=cls_level,
        branching_fraction=of_mu["mu"] * BF_SM,
        fit_method=best.method,
        seconds=time.perf_counter() - start,
        gof_p_value=gof.p_value if gof else None,
        gof_toys=toys,
        gof_failed=len(gof.failed) if gof else 0,
        impacts=tuple((i.name, i.up, i.down) for i in ranking.impacts),
        impacts_failed=ranking.failed,
        blinded=blind,
        pulls=_pulls(lh, best, unc),
    )
    return Inference(result, best, unc, ranking.impacts, gof)


def _of_mu(
    lh: Likelihood,
    best: FitResult,
    errors: tuple[float, float],
    cls_level: float,
    blind: bool,
) -> dict[str, Any]:
    """The results that depend on the fitted mu (``errors``: its total and stat errors).

    Blind: NaN, the limit None, and nothing of it computed.
    """
    nan = math.nan
    if blind:
        keys = ("mu", "mu_hesse", "minos_down", "minos_up", "stat", "syst", "z_bkg", "z_sm")
        return {**dict.fromkeys(keys, nan), "upper_limit": None, "nll": nan}
    total, stat = errors
    down, up = lh.minos(best, sigma=total)
    return {
        "mu": float(best.x[lh.poi]),
        "mu_hesse": total,
        "minos_down": down,
        "minos_up": up,
        "stat": stat,
        "syst": math.sqrt(max(total**2 - stat**2, 0.0)) if math.isfinite(stat) else nan,
        "z_bkg": significance(lh, best, 0.0),
        "z_sm": significance(lh, best, 1.0),
        "upper_limit": _limit(lh, best, cls_level),
        "nll": best.nll,
    }


def _errors_of_mu(lh: Likelihood, best: FitResult, unc: Any) -> tuple[float, float]:
    """(total, stat-only) Hesse errors of mu; NaN both where mu has no curvature.

    Stat-only: every nuisance held at its best-fit value, so the curvature in mu alone. With
    no curvature in mu at all (mu at its bound with no events where the signal lives) the
    stat-only error is not defined, and is reported as such (NaN), not invented.
    """
    poi = lh.poi
    curvature = float(lh.hessian(best.x)[poi, poi])
    if curvature <= 0:
        return math.nan, math.nan
    return float(unc.error[poi]), 1.0 / math.sqrt(curvature)


def _pulls(lh: Likelihood, best: FitResult, unc: Any) -> tuple[tuple[str, float, float], ...]:
    """(name, pull, post-fit width) of every constrained, free parameter, in prior widths."""
    return tuple(
        (lh.labels[i], float((best.x[i] - lh.init[i]) / w), float(unc.error[i] / w))
        for i, w in enumerate(lh.prior_width)
        if np.isfinite(w) and i not in best.fixed
    )


def _limit(lh: Likelihood, best: FitResult, cls_level: float) -> float | None:
    try:
        return upper_limit(lh, best, cls_level)
    except LimitAboveBoundError as exc:
        log.warning("%s", exc)
        return None


def limit_text(r: AnalysisResult) -> str:
    """The CLs limit of a result as the tables print it."""
    if r.blinded:
        return "blinded"
    if r.upper_limit is None:
        return f"> {r.limit_bound:g} ({r.cl:.0%})"
    return f"{r.upper_limit:.2f} ({r.cl:.0%})"


def markdown_table(results: tuple[AnalysisResult, ...], published: bool) -> str:
    """Markdown table of results, with the published numbers beside them when they apply."""
    lines = [
        "| model | mu | MINOS | stat | syst | B (1e-5) | Z vs mu=0 | Z vs SM | CLs UL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.blinded:
            lines.append(f"| {r.analysis} |" + " blinded |" * 8)
            continue
        lines.append(
            f"| {r.analysis} | {r.mu:.2f} +- {r.mu_hesse:.2f} | {r.minos_down:+.2f} / "
            f"{r.minos_up:+.2f} | {r.stat:.2f} | {r.syst:.2f} | {r.branching_fraction * 1e5:.2f} | "
            f"{r.z_bkg:.2f} | {r.z_sm:.2f} | {limit_text(r)} |"
        )
        if published and r.analysis in PUBLISHED:
            p = PUBLISHED[r.analysis]
            lines.append(
                f"| {r.analysis} (published) | {p['mu']:.2f} | {p['minos'][0]:+.2f} / "
                f"{p['minos'][1]:+.2f} | | | | {p['z_bkg']:.2f} | {p['z_sm']:.2f} | |"
            )
    if any(r.blinded for r in results):
        lines.append(
            "\nBLINDED: mu and what depends on it (its uncertainties, MINOS, B, Z, limit, "
            "impacts) are hidden until unblinding; the pulls, correlations and fit quality are not"
        )
    for r in results:
        if r.gof_p_value is not None:
            lines.append(
                f"\n{r.analysis}: goodness of fit (saturated model, {r.gof_toys} toys"
                + (f", {r.gof_failed} failed fits left out" if r.gof_failed else "")
                + f"): p = {r.gof_p_value:.2f}"
            )
        if r.impacts:
            lines.append(f"\n{r.analysis}: largest post-fit impacts on mu (up / down)")
            lines.extend(
                f"  {name:45s} {up:+.3f} / {down:+.3f}" for name, up, down in r.impacts[:8]
            )
        if r.impacts_failed:
            lines.append(
                f"  left out, their refits did not converge: {', '.join(r.impacts_failed)}"
            )
    if published:
        lines.append(
            "\nPublished centres come from Minuit at pyhf's default tolerance, which stops about "
            "0.01 in mu short of the minimum; knunu's fits converge to EDM < 1e-10, so compare the "
            "MINOS interval end points (mu + down, mu + up), which agree."
        )
    return "\n".join(lines)


def fit_workspace_file(
    path: str | Path,
    out_dir: str | Path,
    analyses: list[str] | None = None,
    cls_level: float = 0.9,
    *,
    with_impacts: bool = False,
    toys: int = 0,
    toy_analyses: tuple[str, ...] | None = None,
    seed: int = 0,
    make_plots: bool = True,
    blind: bool = False,
) -> FitSummary:
    """Fit every requested analysis of a workspace file and write the results.

    ``results.json`` and ``results.md`` are written atomically into ``out_dir``. Blind (data
    whose mu is not to be seen yet), mu and what depends on it are neither computed nor written
    (:func:`analyse`), and the plots that show the data against the fitted model are not made.

    Args:
        path: A pyhf JSON workspace.
        out_dir: Where the results go.
        analyses: ``combined``, ``ita``, ``hta``; default: all the workspace holds.
        cls_level: Confidence level of the CLs upper limit.
        with_impacts: Rank every nuisance parameter by its impact on mu.
        toys: Goodness-of-fit pseudo-experiments per model (0: none).
        toy_analyses: The models that get the goodness-of-fit toys (default: all).
        seed: Seed of the pseudo-experiments.
        make_plots: Also write pre/post-fit, pulls, impacts and correlation plots (PNG).
        blind: See above.
    """
    path = Path(path)
    workspace = load_workspace(path)
    is_published = sha256(path) == sha256(published_workspace_path())
    wanted = analyses or analyses_in(workspace)
    bins = load_bins(path)
    # an earlier fit's plots go first: a blind fit after an unblinded one leaves no data plot
    shutil.rmtree(Path(out_dir) / "plots", ignore_errors=True)
    results = []
    for analysis in wanted:
        lh = Likelihood.from_workspace(select(workspace, analysis))
        wanted_toys = toys if toy_analyses is None or analysis in toy_analyses else 0
        inference = analyse(lh, analysis, cls_level, with_impacts=with_impacts,
                            toys=wanted_toys, seed=seed, blind=blind)  # fmt: skip
        results.append(inference.result)
        if make_plots:
            write_plots(
                lh, inference, Path(out_dir) / "plots" / analysis, data=not blind, bins=bins
            )
        if blind:
            log.info("%s: fitted, blinded", analysis)
        else:
            log.info("%s: mu = %.3f", analysis, results[-1].mu)
    return _write_results(path, Path(out_dir), tuple(results), is_published)


def _write_results(
    path: Path, out: Path, results: tuple[AnalysisResult, ...], is_published: bool
) -> FitSummary:
    """``results.json`` and ``results.md`` of a workspace's fits, written atomically."""
    table = markdown_table(results, is_published)
    write_json(
        out / "results.json",
        {
            "workspace": str(path.resolve()),
            "workspace_sha256": sha256(path),
            "results": [asdict(r) for r in results],
        },
    )
    write_text(out / "results.md", f"# Fit of {path.name}\n\n{table}\n")
    return FitSummary(results, table, out, is_published)


def write_plots(
    lh: Likelihood,
    inference: Inference,
    directory: Path,
    *,
    data: bool = True,
    bins: dict[str, Any] | None = None,
) -> list[Path]:
    """Pre- and post-fit distributions per channel, pulls, impacts and correlations as PNG.

    ``data=False`` (blind) leaves out the distributions, which show the data and the fitted mu.
    The distributions carry the model's uncertainty (the priors before the fit, the fit's
    covariance after it) and, given ``bins`` (:func:`knunu.fits.build.load_bins`), bins
    labelled by what they hold.
    """
    best, unc = inference.best, inference.uncertainties
    prior = np.diag(np.nan_to_num(lh.prior_width) ** 2)
    written = []
    for channel in lh.model.config.channels if data else ():
        for stage, x, cov in (("prefit", lh.init, prior), ("postfit", best.x, unc.covariance)):
            fig = plots.stacked(
                lh,
                x,
                channel,
                f"{channel} ({stage})",
                covariance=cov,
                bins=(bins or {}).get(channel),
            )
            written.append(save_figure(fig, directory / f"{channel}_{stage}.png"))
    written.append(save_figure(plots.pulls(lh, best.x, unc), directory / "pulls.png"))
    written.append(save_figure(plots.correlation(lh, unc), directory / "correlation.png"))
    if inference.impacts:
        written.append(
            save_figure(plots.impact_ranking(inference.impacts), directory / "impacts.png")
        )
    if inference.gof is not None and len(inference.gof.toy_deviances):
        written.append(save_figure(plots.gof_toys(inference.gof), directory / "gof.png"))
    return written


def load_results(path: str | Path) -> list[AnalysisResult]:
    """Read ``results.json`` back into :class:`AnalysisResult` objects."""
    data = json.loads(Path(path).read_text())
    out = []
    for r in data["results"]:
        r["impacts"] = tuple(tuple(i) for i in r.get("impacts", ()))
        r["pulls"] = tuple(tuple(p) for p in r.get("pulls", ()))
        r["impacts_failed"] = tuple(r.get("impacts_failed", ()))
        out.append(AnalysisResult(**r))
    return out
