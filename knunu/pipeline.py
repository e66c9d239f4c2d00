"""``knunu run``: the analysis end to end, stage by stage, with a run directory and manifest.

Stages that exist run; stages that are not built yet are reported as such. Nothing is made up:
the simulation runs at the configured scale on the configured Dask cluster, the ITA training
and processors run on the same cluster, and the fit uses the run's own histograms for the
analyses they hold (ITA and HTA, combined). When the run's own workspace cannot be fitted,
the fit stage says why and fits the vendored published Belle II likelihood, labelled as that.

Run directory layout: ``ntuples/`` (catalogue.json), ``tables/`` and ``tables_hta/`` (training
tables), ``models/`` (BDTs, eta, training.json, training_hta.json), ``histograms.root`` (+
``histograms.json`` report, ``overlap.json``: the HTA signal-region events), ``workspaces/``,
``fit/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from knunu.rundir import RunDir

log = logging.getLogger(__name__)


def run_analysis(
    config: dict[str, Any], stages: dict[str, Any], progress: Any = None, client: Any = None
) -> str:
    """Run the pipeline described by ``stages`` (name -> Stage with ``issue`` None when built).

    Args:
        config: The validated analysis configuration.
        stages: The CLI's stage registry.
        progress: Called with every processor run's :class:`~knunu.processors.run.Progress`.
        client: A Dask client to use; ``None`` starts one on ``config["cluster"]``.

    Returns:
        The text report printed by the CLI.
    """
    from knunu.cluster import get_client

    run = RunDir(config["output_dir"], config)
    lines = [f"knunu run: run directory {run.path.resolve()}"]
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(get_client(config["cluster"]))
        for name, stage in stages.items():
            if name == "fit":
                continue
            if stage.issue is not None:
                run.record_stage(name, "not built", tracked_in=stage.issue)
                lines.append(f"  {name:9s} not built yet ({stage.issue})")
                continue
            lines += _STAGE_RUNNERS[name](config, run, client, progress)
    lines += _fit(config, run)
    run.write_manifest()
    return "\n".join(lines)


def _run_simulate(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> list[str]:
    from knunu.simulation.production import plan_production, run_production

    catalogue = run_production(plan_production(config, run.path / "ntuples"), client)
    run.record_output(catalogue)
    run.record_stage("simulate", "done", catalogue=str(catalogue.resolve()))
    return [
        f"  {'simulate':9s} done: {catalogue.resolve()}",
        *(f"            {line}" for line in catalogue_summary(catalogue)),
    ]


def _run_train(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> list[str]:
    summary = train_stage(config, run.path, client, progress)
    run.record_output(run.path / "models" / "training.json")
    run.record_stage("train", "done", models=str((run.path / "models").resolve()))
    return [f"  {'train':9s} done: {run.path / 'models'}", *training_summary(summary)]


def _run_process(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> list[str]:
    report = process_stage(config, run.path, client, progress)
    run.record_output(run.path / "histograms.root")
    run.record_stage("process", "done", histograms=str((run.path / "histograms.root").resolve()))
    events = sum(report.events_processed.values())
    return [
        f"  {'process':9s} done: {run.path / 'histograms.root'} ({events} ITA events in "
        f"{report.chunks} chunks, {sum(report.events_lost.values())} lost, "
        f"{report.wall_seconds:.1f} s)",
        *(f"            {line}" for line in process_summary(run.path)),
    ]


_STAGE_RUNNERS = {"simulate": _run_simulate, "train": _run_train, "process": _run_process}


def _fit(config: dict[str, Any], run: RunDir) -> list[str]:
    """Fit the configured workspace, else the run's own, else the published likelihood.

    The run's own workspace is fitted with the full inference; when that fit cannot be done
    (a small-scale run has too few events for a CLs limit or converging toys), the reason is
    reported and recorded, and the published likelihood is fitted instead, labelled as such.
    """
    from knunu.errors import KnunuError
    from knunu.fits.build import analyses_in_file, write_workspaces
    from knunu.fits.catalogue import load_catalogue
    from knunu.fits.workspace import published_workspace_path

    lines: list[str] = []
    workspace = config["fit"]["workspace"]
    histograms = run.path / "histograms.root"
    if workspace is not None:
        return _fit_workspace(config, run, workspace, "configured workspace")
    if histograms.exists():
        analyses = analyses_in_file(histograms)
        label = f"this run's own {'+'.join(analyses).upper()} workspace"
        try:
            paths = write_workspaces(
                histograms,
                run.path / "workspaces",
                load_catalogue(),
                config["fit"]["prune_threshold"],
                analyses,
            )
            own = str(paths.get("combined", paths[analyses[0]]))
            return _fit_workspace(config, run, own, label)
        except KnunuError as exc:
            log.warning("own workspace not fitted: %s", exc)
            run.record_stage("fit_own", "failed", reason=str(exc))
            lines.append(f"  {'fit':9s} {label}: could not be fitted ({exc})")
    published = str(published_workspace_path())
    return lines + _fit_workspace(
        config,
        run,
        published,
        "the published Belle II likelihood (this run has no fitted histograms of its own)",
    )


def _fit_workspace(config: dict[str, Any], run: RunDir, workspace: str, label: str) -> list[str]:
    from knunu.fits.report import fit_workspace_file

    summary = fit_workspace_file(
        workspace,
        run.path / "fit",
        cls_level=config["fit"]["cls_level"],
        with_impacts=True,
        toys=config["fit"]["gof_toys"],
        seed=config["seed"],
    )
    run.record_input(workspace)
    for f in ("results.json", "results.md"):
        run.record_output(run.path / "fit" / f)
    run.record_stage("fit", "done", workspace=str(Path(workspace).resolve()), label=label)
    return [
        f"  {'fit':9s} done: {label}",
        "",
        summary.markdown,
        "",
        f"outputs: {run.path.resolve()} (manifest.json, fit/results.json, fit/results.md)",
    ]


def training_summary(summaries: tuple[Any, Any]) -> list[str]:
    """Lines describing the ITA and HTA training summaries (what the CLI and the run print)."""
    ita, hta = summaries
    return [
        f"            BDT1 AUC {ita.auc_bdt1:.3f}, BDT2 AUC {ita.auc_bdt2:.3f} (out-of-fold)",
        f"            signal efficiency: {ita.signal_efficiency_bdt1:.3f} after BDT1, "
        f"{ita.signal_efficiency_sr:.4f} for eta > 0.92 (of all produced signal)",
        f"            BDTc: AUC {ita.auc_bdtc:.3f}, weights {ita.bdtc_weight_mean:.2f} "
        f"+- {ita.bdtc_weight_std:.2f}; off-resonance data/MC "
        f"{ita.offres_data_over_mc:.2f}, "
        f"shape chi2/ndf {ita.offres_chi2_before:.2f} -> {ita.offres_chi2_after:.2f} "
        f"(ndf {ita.offres_ndf})",
        f"            HTA: BDTh AUC {hta.auc_bdth:.3f}; signal efficiency "
        f"{hta.signal_efficiency_selection:.5f} after the selection, "
        f"{hta.signal_efficiency_sr:.5f} for eta(BDTh) > 0.4 (published 0.004), "
        f"purity {hta.purity_sr:.3f} (published about 0.04)",
        f"            HTA continuum classifier: {hta.continuum_classifier}",
    ]


def run_options(config: dict[str, Any], run_dir: Path, progress: Any = None) -> Any:
    """The processor-run options of ``config["processing"]``; checkpoints under the run."""
    from knunu.processors.run import RunOptions

    proc = config["processing"]
    return RunOptions(
        retries=int(proc["retries"]),
        retry_wait=float(proc["retry_wait_s"]),
        skip_bad_inputs=bool(proc["skip_bad_inputs"]),
        checkpoint_dir=Path(run_dir) / "checkpoints" if proc["checkpoints"] else None,
        progress=progress,
    )


def train_stage(
    config: dict[str, Any], run_dir: Path, client: Any | None, progress: Any = None
) -> tuple[Any, Any]:
    """Training tables on the cluster, then the ITA and HTA models; (ITA, HTA) summaries."""
    from knunu.mva.hta import train_hta
    from knunu.mva.train import train_ita
    from knunu.processors.run import Catalogue
    from knunu.processors.stage import make_tables

    catalogue = Catalogue.load(run_dir / "ntuples" / "catalogue.json")
    options = run_options(config, run_dir, progress)
    make_tables(catalogue, config["ita"], run_dir / "tables", client, options=options)
    make_tables(
        catalogue, config["hta"], run_dir / "tables_hta", client, analysis="hta", options=options
    )
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    models, seed = run_dir / "models", config["seed"]
    ita = train_ita(run_dir / "tables", catalogue.datasets, config["ita"], models, seed)
    hta = train_hta(run_dir / "tables_hta", catalogue.datasets, config["hta"], models, seed)
    return ita, hta


def process_stage(
    config: dict[str, Any], run_dir: Path, client: Any | None, progress: Any = None
) -> Any:
    """The HTA, then the ITA processor (overlap removed) into ``histograms.root``; ITA report.

    Finished chunks are checkpointed under ``<run>/checkpoints`` (when configured): an
    interrupted run restarted on the same run directory continues where it stopped. They are
    removed once the histogram file is written.
    """
    from knunu.processors.run import Catalogue
    from knunu.processors.stage import make_histograms

    catalogue = Catalogue.load(run_dir / "ntuples" / "catalogue.json")
    _, report = make_histograms(
        catalogue,
        config["ita"],
        run_dir / "models",
        run_dir / "histograms.root",
        client,
        hta_cfg=config["hta"],
        options=run_options(config, run_dir, progress),
    )
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return report


def process_summary(run_dir: Path) -> list[str]:
    """Lines on the HTA run and the overlap removal, from ``histograms.json``."""
    from knunu.processors.stage import HTA_DATASETS, overlap_fraction

    doc = json.loads((Path(run_dir) / "histograms.json").read_text())
    if "hta" not in doc:
        return []
    catalogue = json.loads((Path(run_dir) / "ntuples" / "catalogue.json").read_text())
    signal = overlap_fraction(doc["overlap"], ("signal",), catalogue["datasets"])
    rep = doc["hta"]["report"]
    n_sr = sum(doc["hta"]["sr_events"].values())
    mc = tuple(d for d in HTA_DATASETS if d != "data_on")
    return [
        f"HTA: {sum(rep['events_processed'].values())} events in {rep['chunks']} chunks, "
        f"{n_sr} in its signal region (all datasets)",
        "ITA/HTA overlap removed from the ITA signal region: "
        f"{100 * overlap_fraction(doc['overlap'], mc, catalogue['datasets']):.2g} % of the "
        f"expected events at mu = 1 ({100 * signal:.2g} % of its signal), "
        f"{doc['overlap'].get('data_on', {}).get('matched', 0)} data events "
        "(published: about 2 % of the ITA signal-region events)",
    ]


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
