"""``knunu reinterpret``: the WET fit and the B+ -> K+ X scan on a likelihood, with outputs.

Two likelihoods: the published one (Belle II's data, their maps, their signal MC's null) and
the run's own measurement at 362 fb^-1 (its templates, its maps, knunu's null). The run's own
is blinded as the measurement is: until ``--unblind`` its data are the Asimov data of the SM
template at ``measurement.expected_mu`` (expected results), never the pseudo-data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyhf

from knunu.errors import InputError
from knunu.fits.infer import Likelihood
from knunu.fits.validation import nominal_point
from knunu.fits.workspace import load_workspace, published_workspace_path
from knunu.reinterpret import maps as maps_
from knunu.reinterpret import plots, scan, spectra
from knunu.rundir import atomic_path, save_figure

log = logging.getLogger(__name__)

PUBLISHED_X = "m_X = 2.1 +0.2 -0.1 GeV, B x P_inv = (9.2 +1.8 -3.4) x 10^-6 (arXiv:2602.09666)"


class Source(NamedTuple):
    """A likelihood to reinterpret, with its maps and the null of their MC."""

    name: str
    workspace: pyhf.Workspace
    maps: dict[str, maps_.Map]
    null: spectra.Null
    data: np.ndarray | None  # main data replacing the workspace's observed (blinding)
    data_label: str


def published_source() -> Source:
    """The published likelihood, observed data, with Belle II's maps."""
    return Source(
        "published",
        load_workspace(published_workspace_path()),
        maps_.published_maps(),
        spectra.NULLS["belle2"],
        None,
        "observed, Belle II 362 fb^-1 (published likelihood)",
    )


def check_run(run_dir: str | Path) -> None:
    """The run's inputs exist (checked before any long fit).

    Raises:
        InputError: the measurement workspace or the histogram file is missing.
    """
    run_dir = Path(run_dir)
    for path in (
        run_dir / "measurement" / "workspaces" / "combined.json",
        run_dir / "histograms.root",
    ):
        if not path.is_file():
            raise InputError(f"{path}: missing (run `knunu run` first: a measurement and its maps)")


def run_source(run_dir: str | Path, unblind: bool, expected_mu: float) -> Source:
    """The run's measurement at 362 fb^-1 with its own maps (Asimov data while blind).

    Raises:
        InputError: the run has no measurement workspace, summary or maps.
    """
    check_run(run_dir)
    run_dir = Path(run_dir)
    path = run_dir / "measurement" / "workspaces" / "combined.json"
    workspace = load_workspace(path)
    summary_path = run_dir / "measurement" / "summary.json"
    try:
        lumi = float(json.loads(summary_path.read_text())["luminosity_fb"]["on"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{summary_path}: no measurement summary with its luminosity ({exc!r})"
        ) from None
    data, label = None, f"pseudo-data, {lumi:g} fb^-1 (unblinded)"
    if not unblind:
        plain = Likelihood.from_workspace(workspace)
        data = plain.expected_data(nominal_point(plain, expected_mu))[: plain.nmain]
        label = f"expected: Asimov at mu = {expected_mu:g}, {lumi:g} fb^-1 (blinded)"
    return Source(
        "run",
        workspace,
        maps_.run_maps(run_dir / "histograms.root"),
        spectra.NULLS["knunu"],
        data,
        label,
    )


def _likelihood(workspace: pyhf.Workspace, data: np.ndarray | None) -> Likelihood:
    lh = Likelihood.from_workspace(workspace)
    return lh if data is None else scan.with_main_data(lh, data)


def _fmt_interval(ivals: list[tuple[float, float]]) -> str:
    return " u ".join(f"[{a:.2f}, {b:.2f}]" for a, b in ivals) or "-"


class Summary(NamedTuple):
    """What one reinterpretation wrote and its Markdown summary."""

    directory: Path
    markdown: str
    numbers: dict[str, Any]


def reinterpret(source: Source, out_dir: str | Path, cfg: Mapping[str, Any]) -> Summary:
    """The WET fit and the mass scan of one source, written to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = _likelihood(source.workspace, source.data)
    plain_fit = plain.fit()
    wet_ws = scan.wet_workspace(source.workspace, source.maps, source.null)
    with atomic_path(out / "workspace_wet.json") as tmp:
        tmp.write_text(json.dumps(dict(wet_ws), indent=1))
    lh = _likelihood(wet_ws, source.data)
    pairs = [tuple(p) for p in cfg["pairs"]] if cfg["grid_2d"] else []
    wet = scan.fit_wet(
        lh,
        source.data_label,
        n_grid=int(cfg["grid"]),
        pairs=pairs,
        n_grid_2d=int(cfg["grid_2d"]),
        template_yield=scan.signal_yield(source.workspace),
    )
    m = cfg["masses"]
    masses = np.linspace(float(m["min"]), float(m["max"]), int(m["n"]))
    x = scan.scan_x(
        source.workspace,
        source.maps,
        source.null,
        masses,
        level=float(cfg["level"]),
        data=source.data,
        data_label=source.data_label,
        expected=bool(cfg["expected_limits"]),
    )
    numbers = {
        "source": source.name,
        "data": source.data_label,
        "plain_mu": float(plain_fit.x[plain.poi]),
        "wet": scan.summary(wet),
        "x": scan.summary(x),
    }
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(numbers, indent=1))
    save_figure(plots.profiles(wet), out / "wet_profiles.png")
    if wet.contours:
        save_figure(plots.contours(wet), out / "wet_contours.png")
    if len(masses):
        save_figure(plots.mass_scan(x), out / "x_limits.png")
    markdown = _markdown(source, wet, x, numbers["plain_mu"])
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown)
    return Summary(out, markdown, numbers)


def _markdown(source: Source, wet: scan.WetResult, x: scan.XResult, plain_mu: float) -> str:
    lines = [
        f"## Reinterpretation: {source.name} likelihood ({source.data_label})",
        "",
        "Weak Effective Theory, profile likelihood (|C| in EOS's normalisation, C_VL_SM = "
        f"{spectra.C_VL_SM:.3f}; form factors: BSZ2015 fit of arXiv:2507.12393 as 8 "
        "constrained nuisances). The published numbers are Bayesian (posterior mode, 95 % "
        "credible interval, flat priors):",
        "",
        "| coupling | best fit | 68 % CL | 95 % CL | published mode [95 % credible] |",
        "|---|---|---|---|---|",
    ]
    for name in spectra.WET_TERMS:
        mode, (lo, hi) = scan.PUBLISHED_WET[name]
        iv = wet.intervals[name]
        label = plots.LABELS[name].replace("|", "\\|")  # a table cell
        lines.append(
            f"| {label} | {wet.best[name]:.2f} | {_fmt_interval(iv['68%'])} | "
            f"{_fmt_interval(iv['95%'])} | {mode:.2f} [{lo:.2f}, {hi:.2f}] |"
        )
    lines += [
        "",
        f"Vector coupling alone (C_S = C_T = 0): |C_V| = {wet.vector_only:.2f}, i.e. a signal "
        f"strength of {wet.mu_equivalent:.2f} (the SM fit of the same data: mu = "
        f"{plain_mu:.2f}).",
    ]
    if wet.failed_fits:
        lines.append(f"{wet.failed_fits} scan fits did not converge (NaN in the profiles).")
    if len(x.masses):
        k = int(np.nanargmax(np.where(np.isfinite(x.local_z), x.local_z, -np.inf)))
        finite = np.isfinite(x.observed)
        lines += [
            "",
            f"B+ -> K+ X (narrow, invisible X; SM B+ -> K+ nu nubar at mu = 1 as background), "
            f"{len(x.masses)} masses {x.masses[0]:.2f}-{x.masses[-1]:.2f} GeV, "
            f"{x.level:.0%} CLs:",
            "",
            f"- largest local significance {x.local_z[k]:.2f} at m_X = {x.masses[k]:.2f} GeV, "
            f"fitted B = {x.best[k]:.2e} (published: {PUBLISHED_X})",
        ]
        if finite.any():
            lines.append(
                f"- upper limits on these data {np.nanmin(x.observed):.2e} to "
                f"{np.nanmax(x.observed):.2e}; expected (median) "
                f"{np.nanmin(x.expected):.2e} to {np.nanmax(x.expected):.2e}"
            )
        if x.failed:
            where = ", ".join(f"{m:.2f}" for m in x.failed)
            lines.append(
                f"- no limit at {len(x.failed)} masses (above B = "
                f"{scan.X_MAX * spectra.BF_UNIT:g}, or a fit failed: see the log): {where} GeV"
            )
    return "\n".join(lines) + "\n"


def write_maps(source: Source, out_dir: str | Path) -> dict[str, Any]:
    """The run's maps as CSV and JSON, compared with the published (JSON and plot)."""
    out = Path(out_dir)
    maps_.write_maps(source.maps, out)
    comparison = maps_.compare(source.maps, maps_.published_maps())
    doc = {
        region: {
            "row_ratio_run_over_published": c.row_ratio.tolist(),
            "q2gen_mean_run": _mean_q2(c.q2_ours),
            "q2gen_mean_published": _mean_q2(c.q2_published),
        }
        for region, c in comparison.items()
    }
    with atomic_path(out / "comparison.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    save_figure(plots.map_comparison(comparison), out / "comparison.png")
    return doc


def _mean_q2(columns: np.ndarray) -> float:
    """Mean q2gen of a map's column sums (the bin below 0 left out)."""
    return float(columns[1:] @ maps_.Q2_CENTRES[1:] / columns[1:].sum())
