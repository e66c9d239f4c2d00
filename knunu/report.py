"""The run's results report (``<run>/report.md``) and the headline table ``knunu run`` prints.

Everything is read back from the run directory (catalogue, histograms, training summaries,
fit results, validation results), so the report describes exactly what the files hold and
can be rebuilt from a finished run. Plots are PNG files beside it, linked relatively.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markdown_it import MarkdownIt

from knunu import published, stamps
from knunu.rundir import save_figure, write_text

log = logging.getLogger(__name__)

#: Validations of the paper that need samples this simulation does not write (yet).
NOT_COVERED = {
    "kaon-ID check with B -> D(K pi) h, D daughters removed": (
        "needs exclusive D reconstruction in the ntuples"
    ),
    "pion sideband on electron- and on muon-enriched samples separately": (
        "the lepton ID does not tell electrons from muons; the sideband is fitted on all events "
        "and on events with a lepton"
    ),
    "data-period split": "the pseudo-data are one period",
}


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _blind_fit(run_dir: Path) -> bool:
    """Whether the fit stage's results are blinded (``fit/results.json``)."""
    from knunu.fits.report import load_results

    path = run_dir / "fit" / "results.json"
    return path.exists() and any(r.blinded for r in load_results(path))


def _fitted(run_dir: Path) -> dict[str, Any]:
    return _load(run_dir / "fit" / "fitted.json") or {"label": "no fit", "own": False}


def headline(run_dir: str | Path, config: dict[str, Any]) -> list[str]:
    """The headline: the fit at this run's luminosity, then the measurement at 362 fb^-1.

    The fit of the event-level pseudo-data at the run's own luminosity comes first; while
    blind, its mu, B, Z and limit and the injected mu_true are hidden and only the expected
    sigma(mu) is shown. The measurement (``measurement/summary.json``,
    :mod:`knunu.measurement`) ends the headline, next to the published result: expected
    results while blind, the observed ones after ``--unblind``.
    """
    from knunu.measurement import headline_lines

    run_dir = Path(run_dir)
    measurement = _load(run_dir / "measurement" / "summary.json")
    lines = ["", *headline_lines(measurement)] if measurement else []
    return [
        *_run_luminosity_fit(run_dir, config),
        *lines,
        "",
        f"published (362 fb^-1): {published.HEADLINE}; expected sigma(mu) at mu = 4.6: "
        + ", ".join(
            f"{m if m == 'combined' else m.upper()} {s:g}"
            for m, s in published.EXPECTED_SIGMA.items()
        ),
    ]


def _run_luminosity_fit(run_dir: Path, config: dict[str, Any]) -> list[str]:
    """The fit stage's table (mu, stat, syst, B, significances) with mu_true and sigma(mu).

    Beside each model: the expected sigma(mu) at this run's luminosity and projected to the
    measurement's (from ``validation/projection.json``).
    """
    from knunu.fits.report import limit_text, load_results

    path = run_dir / "fit" / "results.json"
    if not path.exists():
        return ["no fit results in this run"]
    results = load_results(path)
    fitted = _fitted(run_dir)
    proj = _load(run_dir / "validation" / "projection.json") or {}
    if any(r.blinded for r in results):
        return _blinded_fit_lines(fitted, results, proj)
    mu_true = config["simulation"]["mu_true"] if fitted["own"] else None
    truth = f"injected mu_true = {mu_true:g}" if mu_true is not None else "no injected truth"
    lumi = proj.get("projected_luminosity_fb")
    projected = f"{lumi:g} fb^-1" if lumi else "projected"
    lines = [
        f"Headline: {fitted['label']} ({truth})",
        "",
        "| model | mu_true | mu | stat | syst | MINOS | B (1e-5) | Z vs 0 | Z vs SM | UL | "
        f"exp. sigma here | exp. sigma {projected} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bounded = []
    for r in results:
        here = proj.get("sigma", {}).get(r.analysis)
        there = proj.get("sigma_projected", {}).get(r.analysis)
        lines.append(
            f"| {r.analysis} | {'-' if mu_true is None else f'{mu_true:g}'} | {r.mu:.2f} | "
            f"{r.stat:.2f} | {r.syst:.2f} | {r.minos_down:+.2f} / {r.minos_up:+.2f} "
            f"| {r.branching_fraction * 1e5:.2f} | {r.z_bkg:.2f} | {r.z_sm:.2f} | "
            f"{limit_text(r)} | {'-' if here is None else f'{here:.2f}'} | "
            f"{'-' if there is None else f'{there:.2f}'} |"
        )
        if r.mu <= 1e-6 or r.mu >= r.limit_bound - 1e-6:
            bounded.append(r.analysis)
    if bounded:
        lines.append(
            f"\n{', '.join(bounded)}: mu at the edge of its range [0, {results[0].limit_bound:g}]; "
            "the expected sigma here says how much this run's luminosity can resolve"
        )
    return lines


def _blinded_fit_lines(
    fitted: dict[str, Any], results: list[Any], proj: dict[str, Any]
) -> list[str]:
    """The fit while blind: expected sigma(mu) (the run's own) and fit quality only."""
    lumi = proj.get("luminosity_fb") if fitted["own"] else None
    target = proj.get("projected_luminosity_fb")
    where = "the event-level pseudo-data at this run's luminosity" if fitted["own"] else "data"
    lines = [
        f"Fit of {where}{'' if lumi is None else f' ({lumi:.3g} fb^-1)'}: {fitted['label']}, "
        "BLINDED (mu, B, Z and mu_true hidden until `knunu run --unblind`)",
        "",
        f"| model | exp. sigma(mu) here | exp. sigma(mu) projected to "
        f"{'-' if target is None else f'{target:g}'} fb^-1 | fit quality p |",
        "|---|---|---|---|",
    ]
    for r in results:
        here = proj.get("sigma", {}).get(r.analysis)
        there = proj.get("sigma_projected", {}).get(r.analysis)
        p = "-" if r.gof_p_value is None else f"{r.gof_p_value:.2f}"
        lines.append(
            f"| {r.analysis} | {'-' if here is None else f'{here:.2f}'} | "
            f"{'-' if there is None else f'{there:.2f}'} | {p} |"
        )
    return lines


def _measurement_tables(run_dir: Path) -> list[str]:
    """MC statistics of every signal-region template and the expected impacts, ranked."""
    summary = _load(run_dir / "measurement" / "summary.json")
    if not summary or "skipped" in summary:
        return []
    lines = [
        "**MC statistics of the signal-region templates** at the measurement luminosity "
        "(effective events (sum w)^2 / sum w^2; the background row's last column: the worst "
        "bin's effective MC events over its expected data events, target >= 2)",
        "",
        "| histogram | sample | expected events | effective MC events | worst bin MC/data |",
        "|---|---|---|---|---|",
    ]
    for m in [*summary["mc_statistics"], *summary["nature_statistics"]]:
        ratio = "" if m.get("min_ratio") is None else f"{m['min_ratio']:.3g}"
        lines.append(
            f"| {m['histogram']} | {m['sample']} | {m['expected']:.4g} | "
            f"{m['effective']:.4g} | {ratio} |"
        )
    factorised = summary.get("factorised") or {}
    if factorised:
        lines += [
            "",
            "**Factorised ITA templates** (per q2rec bin: events above the loose eta cut x "
            "a fitted power law (1 - eta)^k x its closure correction per eta row, "
            "knunu.fits.factorise): the loose cut (stepped down where the sample is thin), "
            "its effective MC events, the power law's slope (all q2rec bins), closure against "
            "the template filled event by event (signal-region bins, both MC errors) and one "
            "step down (fitted on eta 0.6-0.8, compared in eta 0.72-0.8)",
            "",
            "| template | loose cut | loose effective | slope k | closure chi2/ndf "
            "| factorised/filled | sideband chi2/ndf | predicted/filled |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {key} | eta > {d['loose_eta']:.2f} | {d['loose_effective']:.0f} | "
                f"{d['slope']:.1f} | "
                f"{d['closure']['chi2']:.1f}/{d['closure']['ndf']} | "
                f"{d['closure']['ratio']:.2f} | {d['sideband_closure']['chi2']:.1f}/"
                f"{d['sideband_closure']['ndf']} | {d['sideband_closure']['ratio']:.2f} |"
                for key, d in factorised.items()
            ),
        ]
    lines += _factorised_rows(summary)
    lines += _breakdown_table(summary)
    expected = {r["analysis"]: r for r in summary["expected"]}
    ranked = expected.get("combined", {}).get("impacts", [])
    if ranked:
        lines += [
            "",
            "**Expected impacts on mu** (combined, Asimov at mu = "
            f"{summary['expected_mu']:g}; post-fit +-1 sigma of each nuisance)",
            "",
            "| rank | parameter | up | down |",
            "|---|---|---|---|",
            *(
                f"| {k} | {name} | {up:+.3f} | {down:+.3f} |"
                for k, (name, up, down) in enumerate(ranked[:20], 1)
            ),
        ]
    return lines


def _factorised_rows(summary: dict[str, Any]) -> list[str]:
    """Per ITA histogram and eta row: the closure correction, the factorised and filled sums."""
    corrections = summary.get("factorisation_correction") or {}
    factorised = summary.get("factorised") or {}
    if not corrections:
        return []
    lines = [
        "",
        "**The factorisation per eta row** (0.92-0.94 / 0.94-0.96 / 0.96-0.98 / 0.98-1): the "
        "closure correction (filled over the power law in the signal region's geometry moved "
        "down, the mean over seven windows from 0.6-0.8 to 0.72-0.92, every ITA sample on and "
        "off resonance) +- the shape systematic it sizes; the "
        "factorised templates summed over the samples against the same templates filled event "
        "by event (their MC error)",
        "",
        "| histogram | correction | factorised | filled |",
        "|---|---|---|---|",
    ]
    for name, c in corrections.items():
        rows = [d["rows"] for key, d in factorised.items() if key.startswith(name + "_")]
        filled, var, made = (np.sum([r[i] for r in rows], axis=0) for i in range(3))
        lines.append(
            f"| {name} | "
            + " / ".join(f"{r:.2f} +- {e:.2f}" for r, e in zip(c["ratio"], c["error"], strict=True))
            + " | "
            + " / ".join(f"{x:.1f}" for x in made)
            + " | "
            + " / ".join(f"{x:.1f} +- {v**0.5:.1f}" for x, v in zip(filled, var, strict=True))
            + " |"
        )
    return lines


def _breakdown_table(summary: dict[str, Any]) -> list[str]:
    """What each model's expected sigma(mu) is made of (knunu.fits.breakdown)."""
    parts = {m: d for m, d in (summary.get("breakdown") or {}).items() if "error" not in d}
    if not parts:
        return []
    models = list(parts)
    by_group = {m: {s["group"]: s for s in d["shares"]} for m, d in parts.items()}
    groups = sorted(
        {g for shares in by_group.values() for g in shares},
        key=lambda g: -max(by_group[m][g]["share"] for m in models if g in by_group[m]),
    )

    def cell(model: str, group: str) -> str:
        found = by_group[model].get(group)
        return f"{found['share']:.2f} ({found['parameters']})" if found else "-"

    return [
        "",
        "**What limits the expected sigma(mu)** (Asimov at mu = "
        f"{summary['expected_mu']:g}; each group's share: sqrt(sigma^2 - sigma^2 with the "
        "group's parameters fixed), its free parameters in brackets; shares of correlated "
        "groups do not add up to the total)",
        "",
        "| | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
        "| sigma(mu) | " + " | ".join(f"{parts[m]['sigma']:.2f}" for m in models) + " |",
        "| stat (every nuisance fixed) | "
        + " | ".join(f"{parts[m]['stat']:.2f}" for m in models)
        + " |",
        *(f"| {g} | " + " | ".join(cell(m, g) for m in models) + " |" for g in groups),
    ]


def _image(rel: str, title: str) -> str:
    return f"![{title}]({rel})"


def _catalogue_table(run_dir: Path) -> list[str]:
    doc = _load(run_dir / "ntuples" / "catalogue.json")
    if doc is None:
        return ["no catalogue"]
    lines = [
        "| dataset | generated | detector copies | ITA entries | HTA entries"
        " | luminosity (fb^-1) |",
        "|---|---|---|---|---|---|",
    ]
    for name, d in doc["datasets"].items():
        lum = d.get("luminosity_fb")
        lines.append(
            f"| {name} | {d['generated']} | {d.get('copies', 0)} | {d['entries_ita']} | "
            f"{d['entries_hta']} | {'' if lum is None else f'{lum:.4g}'} |"
        )
    return [
        *lines,
        "",
        "Detector copies: extra passes of generated events through the detector, each with its"
        " share of the event's weight (`mcCopyOf`; the MC errors count an event's copies as"
        " one); entries are what the prefilter kept of the events and their copies.",
    ]


def _cutflow_table(cutflows: dict[str, Any], title: str, order: tuple[str, ...]) -> list[str]:
    if not cutflows:
        return []
    have = next(iter(cutflows.values()))["events"]
    steps = [s for s in order if s in have] + sorted(set(have) - set(order))
    lines = [
        f"**{title}** (events, unweighted)",
        "",
        "| dataset | " + " | ".join(steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for ds, c in sorted(cutflows.items()):
        lines.append(f"| {ds} | " + " | ".join(f"{c['events'][s]:.0f}" for s in steps) + " |")
    return lines


def _training(run_dir: Path) -> list[str]:
    ita = _load(run_dir / "models" / "training.json")
    hta = _load(run_dir / "models" / "training_hta.json")
    lines = []
    if ita:
        s = ita["summary"]
        lines += [
            f"- ITA: BDT1 AUC {s['auc_bdt1']:.3f}, BDT2 AUC {s['auc_bdt2']:.3f} (out-of-fold); "
            f"signal efficiency {s['signal_efficiency_bdt1']:.3f} after BDT1, "
            f"{s['signal_efficiency_sr']:.4f} for eta > 0.92 "
            f"(published {published.ITA_SR_EFFICIENCY:g})",
            f"- BDTc: AUC {s['auc_bdtc']:.3f}, weights {s['bdtc_weight_mean']:.2f} +- "
            f"{s['bdtc_weight_std']:.2f}",
        ]
    if hta:
        s = hta["summary"]
        lines.append(
            f"- HTA: BDTh AUC {s['auc_bdth']:.3f}; signal efficiency "
            f"{s['signal_efficiency_sr']:.5f} for eta(BDTh) > 0.4 (published "
            f"{published.HTA_SR_EFFICIENCY:g}), purity {s['purity_sr']:.3f} (published about "
            f"{published.HTA_SR_PURITY:g})"
        )
    return lines


def _plots_of(run_dir: Path, folder: str) -> list[str]:
    base = run_dir / folder
    if not base.exists():
        return []
    return [_image(str(p.relative_to(run_dir)), p.stem) for p in sorted(base.rglob("*.png"))]


def write_report(run_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write ``report.md`` (and its BDT-distribution plots) for a run directory."""
    run_dir = Path(run_dir)
    sections = [
        "# knunu run report",
        "",
        f"Run directory `{run_dir.resolve()}`; scale `{config['scale']}`, seed {config['seed']}, "
        f"cluster `{config['cluster']}`. Manifest: `manifest.json` (inputs, config, versions, "
        "hashes); stage stamps: `stages/`.",
        "",
        "## Headline",
        "",
        *headline(run_dir, config),
        "",
        "## Samples",
        "",
        *_catalogue_table(run_dir),
        "",
        *_cutflow_section(_load(run_dir / "histograms.json") or {}),
        *_bdt_section(run_dir),
        *_fit_section(run_dir),
        *_measurement_section(run_dir),
        *_validation_section(run_dir),
        "",
        "## Warnings",
        "",
        *_warnings(run_dir),
    ]
    text = "\n".join(sections) + "\n"
    write_text(run_dir / "report.html", html_report(text, run_dir, f"knunu run {run_dir.name}"))
    return write_text(run_dir / "report.md", text)


def _cutflow_section(hdoc: Mapping[str, Any]) -> list[str]:
    """The ITA, HTA and pion-candidate cutflows of the processors' report."""
    from knunu.processors.hta import STEPS as HTA_STEPS
    from knunu.processors.ita import STEPS as ITA_STEPS
    from knunu.processors.pion import STEPS as PION_STEPS

    pion = hdoc.get("pion", {}).get("cutflows", {})
    return [
        "## Cutflows",
        "",
        *_cutflow_table(hdoc.get("cutflows", {}), "ITA", ITA_STEPS),
        "",
        *_cutflow_table(hdoc.get("hta", {}).get("cutflows", {}), "HTA", HTA_STEPS),
        "",
        *_cutflow_table(pion, "ITA with a pion candidate", PION_STEPS),
        "",
    ]


def _bdt_section(run_dir: Path) -> list[str]:
    """The training summary and the BDT distributions (plots written here)."""
    from knunu.fits import plots

    histograms = run_dir / "histograms.root"
    written = []
    if histograms.exists():
        for name, fig in plots.control_distributions(histograms).items():
            written.append(save_figure(fig, run_dir / "report_plots" / f"{name}.png"))
    offres = run_dir / "models" / "bdtc_offres.png"
    return [
        "## BDTs",
        "",
        *_training(run_dir),
        "",
        *(_image(str(p.relative_to(run_dir)), p.stem) for p in written),
        _image("models/bdtc_offres.png", "off-resonance data vs continuum MC, before/after BDTc")
        if offres.exists()
        else "",
        "",
    ]


def _fit_section(run_dir: Path) -> list[str]:
    """What the fit stage fitted, and its plots (data-vs-model ones only when unblinded)."""
    return [
        "## Fit",
        "",
        f"Fitted: {_fitted(run_dir)['label']}. Tables: `fit/results.md`; per model: pre- and "
        "post-fit distributions, pulls, impacts, correlations, goodness-of-fit toys.",
        "",
        *(
            ["(plots of the data against the model hidden while blind)"]
            if _blind_fit(run_dir)
            else []
        ),
        *_plots_of(run_dir, "fit"),
        "",
    ]


def _measurement_section(run_dir: Path) -> list[str]:
    """The measurement at Belle II's luminosity: its tables and plots."""
    return [
        "## Measurement at Belle II's luminosity",
        "",
        "Templates and histogram-level pseudo-data: `measurement/histograms.root`; workspaces "
        "`measurement/workspaces/`; expected-result plots (Asimov) and, after unblinding, the "
        "observed ones:",
        "",
        *_measurement_tables(run_dir),
        "",
        *_plots_of(run_dir, "measurement"),
        "",
    ]


def _validation_section(run_dir: Path) -> list[str]:
    """The validation's lines and plots, and what this simulation cannot validate."""
    lines = [
        "## Validation",
        "",
        *(f"- {line}" for line in _load(run_dir / "validation" / "lines.json") or []),
        "",
        *_plots_of(run_dir, "validation"),
        "",
        "Not covered by this simulation (each needs more than the ntuples hold):",
        "",
        *(f"- {k}: {v}" for k, v in NOT_COVERED.items()),
        "",
    ]
    if _load(run_dir / "validation" / "summary.json") is None:
        lines.append("(the validation stage has not run)")
    return lines


_HTML = jinja2.Template(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; max-width: 80em; margin: 2em auto; line-height: 1.4; }
table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 48em; display: block; margin: 0.5em 0; }
code { background: #f3f3f3; }
</style></head>
<body>
{{ body }}
</body></html>
""",
    autoescape=False,  # the body is markdown-it's HTML, itself escaped (html=False)
)


def html_report(markdown: str, run_dir: Path, title: str) -> str:
    r"""The report as one HTML page: tables rendered, every plot inline (a data URI).

    An image whose file is missing stays a link to it.

    >>> page = html_report("# R\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", Path("."), "t")
    >>> "<table>" in page and "<td>1</td>" in page
    True
    """
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match[str]) -> str:
        path = run_dir / html.unescape(match.group(1))
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    return _HTML.render(title=html.escape(title), body=body)


def _warnings(run_dir: Path) -> list[str]:
    """What each stage's last run logged at WARNING or above (its stamp), each once."""
    found = sorted((run_dir / stamps.STAMP_DIR).glob("*.json"), key=lambda p: p.stat().st_mtime)
    lines = []
    for path in found:
        stamp = stamps.load_stamp(run_dir, path.stem)
        for w in stamp.warnings if stamp else ():
            times = f" ({w.count} times)" if w.count > 1 else ""
            lines.append(f"- {stamp.stage}: {w.level} {w.logger}: {w.message}{times}")
    note = "(logged by the stages themselves; what runs inside Dask workers logs to the workers)"
    return [note, "", *lines] if lines else ["None logged by the stages in their last run " + note]
