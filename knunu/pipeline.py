"""``knunu run``: the analysis end to end, stage by stage, with a run directory and manifest.

Stages that exist run; stages that are not built yet are reported as such. Nothing is made up:
the simulation runs at the configured scale on the configured Dask cluster; until the
processors exist, the fit stage fits the vendored published Belle II likelihood and labels it
as that.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from knunu.rundir import RunDir

log = logging.getLogger(__name__)


def run_analysis(config: dict[str, Any], stages: dict[str, Any]) -> str:
    """Run the pipeline described by ``stages`` (name -> Stage with ``issue`` None when built).

    Returns:
        The text report printed by the CLI.
    """
    from knunu.fits.report import fit_workspace_file
    from knunu.fits.workspace import published_workspace_path

    run = RunDir(config["output_dir"], config)
    lines = [f"knunu run: run directory {run.path.resolve()}"]
    for name, stage in stages.items():
        if name == "fit":
            continue
        if name == "simulate" and stage.issue is None:
            catalogue = _simulate(config, run.path / "ntuples")
            run.record_output(catalogue)
            run.record_stage(name, "done", catalogue=str(catalogue.resolve()))
            lines.append(f"  {name:9s} done: {catalogue.resolve()}")
            lines.extend(f"            {line}" for line in catalogue_summary(catalogue))
            continue
        if stage.issue is not None:
            run.record_stage(name, "not built", tracked_in=stage.issue)
            lines.append(f"  {name:9s} not built yet ({stage.issue})")
    workspace = config["fit"]["workspace"]
    label = "configured workspace"
    if workspace is None:
        workspace = str(published_workspace_path())
        label = "the published Belle II likelihood (this run has no histograms of its own yet)"
    run.record_input(workspace)
    summary = fit_workspace_file(
        workspace,
        run.path / "fit",
        cls_level=config["fit"]["cls_level"],
        with_impacts=True,
        toys=config["fit"]["gof_toys"],
        seed=config["seed"],
    )
    for f in ("results.json", "results.md"):
        run.record_output(run.path / "fit" / f)
    run.record_stage("fit", "done", workspace=str(Path(workspace).resolve()))
    lines.append(f"  {'fit':9s} done: {label}")
    lines.append("")
    lines.append(summary.markdown)
    lines.append("")
    lines.append(f"outputs: {run.path.resolve()} (manifest.json, fit/results.json, fit/results.md)")
    run.write_manifest()
    return "\n".join(lines)


def _simulate(config: dict[str, Any], directory: Path) -> Path:
    from knunu.cluster import get_client
    from knunu.simulation.production import plan_production, run_production

    plan = plan_production(config, directory)
    with get_client(config["cluster"]) as client:
        return run_production(plan, client)


def catalogue_summary(path: Path) -> list[str]:
    """One line per dataset of a production catalogue: events generated and kept, luminosity."""
    datasets = json.loads(Path(path).read_text())["datasets"]
    out = []
    for name, d in datasets.items():
        lum = d.get("luminosity_fb")
        lum_text = "" if lum is None else f", {lum:.4g} fb^-1"
        out.append(
            f"{name:14s} {d['generated']:>10d} generated, {d['entries_ita']:>9d} ITA, "
            f"{d['entries_hta']:>7d} HTA entries{lum_text}"
        )
    return out
