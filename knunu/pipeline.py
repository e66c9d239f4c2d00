"""``knunu run``: the analysis end to end, stage by stage, with a run directory and manifest.

The stages (:data:`STEPS`) run in order: simulate, train, process, fit, measure (the
measurement at 362 fb^-1 from histogram-level pseudo-data, :mod:`knunu.measurement`; blind
unless ``blind`` is false, ``knunu run --unblind``), validate, then the report. Each is skipped
when its outputs are up to date (:mod:`knunu.stamps`: same config sections, same code, same
inputs, outputs unchanged) and runs again when any of that changed.
Nothing is made up: the simulation runs at the configured scale on the configured Dask
cluster, the training and processors run on the same cluster, and the fit uses the run's own
histograms (ITA, HTA and their combination). When the run's own workspace cannot be fitted,
the fit stage says why and fits the vendored published Belle II likelihood, labelled as that.

Run directory layout: ``ntuples/`` (catalogue.json), ``tables/`` and ``tables_hta/`` (training
tables), ``models/`` (BDTs, eta, training.json, training_hta.json), ``histograms.root`` (+
``histograms.json`` report, ``overlap.json``: the HTA signal-region events), ``workspaces/``,
``fit/``, ``measurement/``, ``validation/``, ``stages/`` (stamps), ``report.md``,
``report.html`` and ``manifest.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from knunu import published, stamps
from knunu.logs import collect_warnings
from knunu.rundir import RunDir

log = logging.getLogger(__name__)


class StepResult(NamedTuple):
    """What a stage made: its output files and the lines it prints."""

    outputs: tuple[Path, ...]
    lines: tuple[str, ...]


class Step(NamedTuple):
    """A pipeline stage: what its outputs depend on and how to run it."""

    name: str
    help: str  # one line: what it does (the CLI's help for its subcommand)
    config_keys: tuple[str, ...]  # dotted configuration keys it reads
    upstream: tuple[str, ...]  # stages whose outputs are its inputs
    run: Callable[[dict[str, Any], RunDir, Any, Any], StepResult]
    needs_cluster: bool = False
    #: What else its outputs depend on, from the configuration (e.g. a user's input files)
    fingerprint: Callable[[dict[str, Any]], str] | None = None

    def code(self) -> tuple[str, ...]:
        """The code its outputs depend on (:func:`knunu.stamps.code_of` of its ``run``)."""
        return stamps.code_of(self.run)


def run_analysis(
    config: dict[str, Any],
    progress: Any = None,
    client: Any = None,
    *,
    force: bool = False,
    client_factory: Callable[[], Any] | None = None,
) -> str:
    """Run the pipeline: every stage that is not up to date, then the report.

    Args:
        config: The validated analysis configuration.
        progress: Called with the simulation's and every processor run's
            :class:`~knunu.progress.Progress`.
        client: A Dask client to use.
        force: Run every stage, up to date or not.
        client_factory: Starts a client when a stage needs one and none was given
            (default: :func:`knunu.cluster.get_client` on ``config["cluster"]``).

    Returns:
        The text report printed by the CLI: one line per stage, then the headline table.
    """
    from knunu.cluster import get_client

    run = RunDir(config["output_dir"], config)
    lines = [f"knunu run: run directory {run.path.resolve()}"]
    digests: dict[str, dict[str, str]] = {}
    with contextlib.ExitStack() as stack:
        for step in STEPS.values():
            key = _stage_key(step, config, digests)
            stamp = stamps.load_stamp(run.path, step.name)
            reason = "forced" if force else stamps.why_stale(run.path, stamp, key)
            if reason is None:
                assert stamp is not None
                lines.append(_skipped(run, step.name, stamp, key, digests))
                continue
            log.info("stage %s runs: %s", step.name, reason)
            stamps.clear_stamp(run.path, step.name)
            if step.needs_cluster and client is None:
                factory = client_factory or (lambda: get_client(config["cluster"]))
                client = stack.enter_context(factory())
            start = time.perf_counter()
            with collect_warnings() as warned:
                result = step.run(config, run, client, progress)
            stamp = stamps.write_stamp(run.path, step.name, key, result.outputs, warned)
            digests[step.name] = stamp.digests()
            seconds = time.perf_counter() - start
            run.record_stage(step.name, "done", key=key, reason=reason, seconds=round(seconds, 1))
            _record_outputs(run, stamp)
            lines += [f"  {step.name:9s} done in {seconds:.0f} s ({reason})", *result.lines]
    from knunu.report import headline, write_report

    report = write_report(run.path, config)
    run.record_output(report)
    run.record_output(report.with_suffix(".html"))
    run.write_manifest()
    lines += ["", *headline(run.path, config), "", f"report: {report.resolve()}"]
    return "\n".join(lines)


def _stage_key(step: Step, config: dict[str, Any], digests: dict[str, dict[str, str]]) -> str:
    """A stage's key: its config sections, its code, its upstream stages' outputs."""
    inputs = {k: v for up in step.upstream for k, v in digests[up].items()}
    if step.fingerprint is not None:
        inputs["fingerprint"] = step.fingerprint(config)
    return stamps.stage_key(step.name, config, step.config_keys, step.code(), inputs)


def _skipped(
    run: RunDir, name: str, stamp: stamps.Stamp, key: str, digests: dict[str, dict[str, str]]
) -> str:
    """Record an up-to-date stage (its outputs' digests into ``digests``); its line."""
    digests[name] = stamp.digests()
    run.record_stage(name, "up to date", key=key)
    _record_outputs(run, stamp)
    return f"  {name:9s} up to date (skipped)"


def _record_outputs(run: RunDir, stamp: stamps.Stamp) -> None:
    for rel, digest in stamp.outputs.items():
        run.manifest["outputs"][rel] = digest.sha256


def _run_simulate(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> StepResult:
    """Simulate the datasets, or import them from the user's catalogue (``catalogue``)."""
    from knunu.errors import InputError
    from knunu.processors.run import Catalogue
    from knunu.simulation.production import plan_production, run_production

    if config.get("catalogue"):
        from knunu.catalogue import import_catalogue

        path = import_catalogue(config["catalogue"], run.path / "ntuples" / "catalogue.json")
        summary = catalogue_summary(path)
        return StepResult(
            (path,),
            (
                f"            imported {config['catalogue']} (no simulation) into {path.resolve()}",
                *(f"            {x}" for x in summary),
            ),
        )
    imported = run.path / "ntuples" / "catalogue.json"
    if imported.exists() and (source := json.loads(imported.read_text()).get("source")):
        raise InputError(
            f"{run.path}: its datasets were imported from {source}; give --catalogue {source} "
            "(or the config's catalogue), or another run directory, to simulate"
        )
    path = run_production(plan_production(config, run.path / "ntuples"), client, progress)
    catalogue = Catalogue.load(path)
    files = [Path(p) for p in catalogue.paths(list(catalogue.datasets))]
    return StepResult(
        (path, *files),
        (f"            {path.resolve()}", *(f"            {x}" for x in catalogue_summary(path))),
    )


def _run_train(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> StepResult:
    summary = train_stage(config, run.path, client, progress)
    models = run.path / "models"
    return StepResult(
        tuple(sorted(p for p in models.iterdir() if p.is_file())), tuple(training_summary(summary))
    )


def _run_process(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> StepResult:
    report = process_stage(config, run.path, client, progress)
    events = sum(report.events_processed.values())
    outputs = (run.path / "histograms.root", run.path / "histograms.json")
    overlap = run.path / "overlap.json"
    return StepResult(
        outputs + ((overlap,) if overlap.exists() else ()),
        (
            f"            {run.path / 'histograms.root'} ({events} ITA events in "
            f"{report.chunks} chunks, {sum(report.events_lost.values())} lost, "
            f"{report.wall_seconds:.1f} s)",
            *(f"            {line}" for line in process_summary(run.path)),
        ),
    )


def _run_fit(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> StepResult:
    """Fit the configured workspace, else the run's own, else the published likelihood.

    The run's own workspace is fitted with the full inference; when that fit cannot be done
    (a small-scale run has too few events for a CLs limit or converging toys), the reason is
    reported and recorded, and the published likelihood is fitted instead, labelled as such.
    """
    from knunu.errors import KnunuError
    from knunu.fits.build import analyses_in_file
    from knunu.fits.workspace import published_workspace_path

    shutil.rmtree(run.path / "fit", ignore_errors=True)
    workspace = config["fit"]["workspace"]
    histograms = run.path / "histograms.root"
    if workspace is not None:
        return _fit_workspace(config, run, Path(workspace), "configured workspace", ())
    lines: tuple[str, ...] = ()
    if histograms.exists():
        label = f"this run's own {'+'.join(analyses_in_file(histograms)).upper()} workspace"
        try:
            own, written = own_workspaces(config, run.path, histograms)
            return _fit_workspace(config, run, own, label + _left_out_note(own), written)
        except KnunuError as exc:
            log.warning("own workspace not fitted: %s", exc)
            run.record_stage("fit_own", "failed", reason=str(exc))
            lines = (f"            {label}: could not be fitted ({exc})",)
    published = published_workspace_path()
    result = _fit_workspace(
        config,
        run,
        published,
        "the published Belle II likelihood (this run's own workspace not fitted)"
        if lines
        else "the published Belle II likelihood (this run has no fitted histograms of its own)",
        (),
    )
    return StepResult(result.outputs, lines + result.lines)


def own_workspaces(
    config: dict[str, Any], run_dir: Path, histograms: Path
) -> tuple[Path, tuple[Path, ...]]:
    """Build a run's own workspaces from its histograms into ``<run>/workspaces``.

    Returns:
        The workspace to fit (the combination when both analyses are there) and every file
        written (the workspaces and what their bins hold).

    Raises:
        InputError: the file holds no fit histograms.
        WorkspaceError: a workspace cannot be built.
    """
    from knunu.errors import InputError
    from knunu.fits.build import BINS_FILE, analyses_in_file, write_workspaces
    from knunu.fits.catalogue import load_catalogue

    analyses = analyses_in_file(histograms)
    if not analyses:
        raise InputError(f"{histograms}: holds no fit histograms (ita_on_data_nominal, ...)")
    out = Path(run_dir) / "workspaces"
    prune = config["fit"]["prune_threshold"]
    paths = write_workspaces(histograms, out, load_catalogue(), prune, analyses)
    return paths.get("combined", paths[analyses[0]]), (*paths.values(), out / BINS_FILE)


def _left_out_note(workspace: Path) -> str:
    """What a run's workspace leaves out: channels with events and no MC (their events)."""
    from knunu.fits.build import left_out, load_bins

    out = left_out(load_bins(workspace))
    if not out:
        return ""
    where = ", ".join(f"{c} {n:g}" for c, n in sorted(out.items()))
    return f" ({sum(out.values()):g} events left out, in channels without any MC: {where})"


def _fit_workspace(
    config: dict[str, Any], run: RunDir, workspace: Path, label: str, written: tuple[Path, ...]
) -> StepResult:
    from knunu.fits.report import fit_workspace_file
    from knunu.rundir import from_a_run, write_json

    fit = config["fit"]
    own = workspace.resolve().is_relative_to(run.path.resolve())
    fit_workspace_file(
        workspace,
        run.path / "fit",
        cls_level=fit["cls_level"],
        with_impacts=True,
        toys=fit["gof_toys"],
        toy_analyses=tuple(fit["gof_analyses"]),
        seed=config["seed"],
        # data from a run (pseudo-data, or real data a run imported) stay hidden while blind
        blind=from_a_run(workspace, run.path) and bool(config.get("blind", True)),
    )
    run.record_input(workspace)
    info = write_json(
        run.path / "fit" / "fitted.json", {"label": label, "own": own, "workspace": str(workspace)}
    )
    files = [p for p in (run.path / "fit").rglob("*") if p.is_file()]
    return StepResult((*written, *files, info), (f"            {label}",))


def _run_measure(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> StepResult:
    from knunu.measurement import run_measurement

    shutil.rmtree(run.path / "measurement", ignore_errors=True)
    summary = run_measurement(config, run.path)
    files = [p for p in (run.path / "measurement").rglob("*") if p.is_file()]
    if "skipped" in summary:
        return StepResult(tuple(files), (f"            {summary['skipped']}",))
    state = "blinded: expected results only" if summary["blind"] else "unblinded"
    lum = summary["luminosity_fb"]
    return StepResult(
        tuple(files),
        (
            f"            measurement at {lum['on']:g} / {lum['off']:g} fb^-1 ({state}); "
            f"pseudo-data events: "
            + ", ".join(f"{k} {v:.0f}" for k, v in summary["pseudo_data_events"].items()),
        ),
    )


def _run_validate(config: dict[str, Any], run: RunDir, client: Any, progress: Any) -> StepResult:
    from knunu.validation import run_validation

    shutil.rmtree(run.path / "validation", ignore_errors=True)
    summary = run_validation(config, run.path)
    files = [p for p in (run.path / "validation").rglob("*") if p.is_file()]
    return StepResult(tuple(files), tuple(f"            {line}" for line in summary))


def _user_inputs(config: dict[str, Any]) -> str:
    """A user catalogue's digest over its files (path, size, mtime); empty when simulating."""
    from knunu.catalogue import files_digest

    return files_digest(config["catalogue"]) if config.get("catalogue") else ""


#: Configuration that never changes a stage's outputs (histograms do not depend on chunking).
_RUN_KEYS = ("processing.skip_bad_inputs",)

#: The pipeline, in order.
STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step(
            "simulate",
            "generate Belle II-like MC and pseudo-data as basf2-style ntuples",
            ("seed", "scale", "simulation", "catalogue"),
            (),
            _run_simulate,
            needs_cluster=True,
            fingerprint=_user_inputs,
        ),
        Step(
            "train",
            "train the ITA BDTs (BDT1, BDT2, BDTc), the HTA BDTh and continuum classifier, "
            "and the eta transforms, with xgboost",
            ("seed", "ita", "hta", *_RUN_KEYS),
            ("simulate",),
            _run_train,
            needs_cluster=True,
        ),
        Step(
            "process",
            "run the HTA and ITA coffea processors (overlap removed) into the fit histograms",
            ("ita", "hta", *_RUN_KEYS),
            ("simulate", "train"),
            _run_process,
            needs_cluster=True,
        ),
        Step(
            "fit",
            "build the pyhf workspaces and run inference",
            ("seed", "blind", "fit"),
            ("process",),
            _run_fit,
        ),
        Step(
            "measure",
            "the measurement at 362 / 42 fb^-1: templates, histogram-level pseudo-data, fits",
            (
                "seed",
                "blind",
                "measurement",
                "simulation.luminosity_fb",
                "simulation.mu_true",
                "fit.prune_threshold",
                "fit.cls_level",
            ),
            ("simulate", "process"),
            _run_measure,
        ),
        Step(
            "validate",
            "the validation suite: embedding, pion sideband, closure, injection, splits, GoF",
            (
                "seed",
                "fit",
                "validation",
                "blind",
                "measurement.expected_mu",
                "simulation.nature.d_to_kl_scale",
                "ita.pion",
                "ita.corrections.d_to_kl_scale",
            ),
            ("simulate", "train", "process", "fit"),
            _run_validate,
        ),
    )
}


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
        f"{hta.signal_efficiency_sr:.5f} for eta(BDTh) > 0.4 (published "
        f"{published.HTA_SR_EFFICIENCY:g}), purity {hta.purity_sr:.3f} (published about "
        f"{published.HTA_SR_PURITY:g})",
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
        no_workers_timeout=float(proc["no_workers_timeout_s"]),
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
        f"(published: about {100 * published.OVERLAP_FRACTION:g} % of the ITA signal-region "
        "events)",
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
