"""The ITA and HTA stages on a cluster: training tables -> training -> histograms (file contract).

``make_tables`` and ``make_histograms`` run coffea processors over the catalogue's datasets on a
Dask client (or in-process), account for every event, and write their outputs atomically with a
run report. The histogram file follows the contract of :mod:`knunu.fits.build`:
``ita_on``/``ita_off``/``hta`` keys ``{channel}_{sample}_{variation}``, simulated samples scaled
to the data luminosity (on or off resonance), Weight storage.

With the HTA, ``make_histograms`` runs it first, writes its signal-region events
(experiment, run, event) to ``overlap.json`` next to the histogram file, and the ITA processor
reads that file on the workers and removes those events from its signal region.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uproot

from knunu.errors import InputError
from knunu.mva.corrections import with_d_to_kl
from knunu.mva.train import OFFRES_MC, bdt2_features, lumi_scale
from knunu.processors import hta
from knunu.processors import run as runner
from knunu.processors.ita import HIST_VARIATIONS, SPLITS, ITAProcessor
from knunu.processors.pion import TRUTH_CLASSES, PionProcessor
from knunu.processors.reuse import with_reuse
from knunu.processors.run import dataset_kind
from knunu.processors.selection import BOOKKEEPING, ENERGY, TRUTH
from knunu.processors.tables import TableProcessor
from knunu.rundir import atomic_path, sha256, write_json
from knunu.samples import BACKGROUNDS, SIGNAL

log = logging.getLogger(__name__)

TREE = "ita"
#: Datasets of the ITA: simulated on- and off-resonance samples and the pseudo-data.
ITA_DATASETS = (SIGNAL, *BACKGROUNDS, *OFFRES_MC, "data_on", "data_off")
#: Datasets the ITA processor also runs on for validation only (never trained on, never fitted).
VALIDATION_DATASETS = ("embedded",)
#: The nature stream: histogram-level pseudo-data of the measurement (never trained on; only
#: its fit histograms are written, as sample ``nature``).
NATURE_DATASETS = ("nature_on", "nature_off")
#: Datasets of the HTA histograms (on resonance only; its tables also take the off-resonance).
HTA_DATASETS = (SIGNAL, *BACKGROUNDS, "data_on", "nature_on")
#: Datasets of the pion-candidate sample (on resonance, with the B+ -> pi+ K0 control MC).
PION_DATASETS = (SIGNAL, *BACKGROUNDS, "pi_k0", "data_on")


def table_names(analysis: str, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The columns the training tables of an analysis hold."""
    if analysis == "hta":
        return hta.hta_names(cfg)
    # ENERGY: what the nominal corrections move (the training applies them, as the processors)
    return (*BOOKKEEPING, *TRUTH, *ENERGY, *bdt2_features(cfg), "K_q2rec", "K_mcPDG")


def make_tables(
    catalogue: runner.Catalogue,
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    client: Any | None = None,
    analysis: str = "ita",
    options: runner.RunOptions | None = None,
) -> runner.RunReport:
    """Write the training tables of every dataset for ``analysis`` (its tree); the run report.

    Raises:
        InputError: a dataset or file of the catalogue is missing or inconsistent.
        ProcessingError: a chunk failed or events went missing.
    """
    datasets = [d for d in ITA_DATASETS if d in catalogue.datasets]
    _require(catalogue, datasets)
    proc = TableProcessor(
        str(Path(out_dir).resolve()), analysis, cfg["selection"], table_names(analysis, cfg)
    )
    output, report = runner.run(
        catalogue, datasets, proc, analysis, client, int(cfg["chunksize"]), options
    )
    # a dataset without entries in the tree (a tiny sample) has no chunks and no output: its
    # table folder is made empty (zero rows), not left missing
    rows = {ds: int(output[ds]["rows"]) if ds in output else 0 for ds in datasets}
    for ds in datasets:
        (Path(out_dir) / ds).mkdir(parents=True, exist_ok=True)
    _remove_stale_tables(Path(out_dir), datasets, output)
    write_json(Path(out_dir) / "tables.json", {"report": report.as_dict(), "rows": rows})
    return report


def _remove_stale_tables(out_dir: Path, datasets: list[str], output: Mapping[str, Any]) -> None:
    """Remove table files this run did not write (the training reads every file there).

    A table file is named after its source file's path and entry range, so an earlier run
    with other chunks (another chunk size, a moved run directory, re-made ntuples) leaves
    files this run does not overwrite: read with this run's, their rows would count twice.
    """
    for ds in datasets:
        made = {Path(f).name for f in output.get(ds, {}).get("files", ())}
        stale = [f for f in (out_dir / ds).glob("*.parquet") if f.name not in made]
        for f in stale:
            f.unlink()
        if stale:
            log.warning(
                "%s: removed %d table file(s) of an earlier run with other chunks",
                out_dir / ds,
                len(stale),
            )


def make_histograms(
    catalogue: runner.Catalogue,
    cfg: Mapping[str, Any],
    models: str | Path,
    out_file: str | Path,
    client: Any | None = None,
    hta_cfg: Mapping[str, Any] | None = None,
    options: runner.RunOptions | None = None,
) -> tuple[dict[str, Any], runner.RunReport]:
    """Run the HTA (if ``hta_cfg``) and the ITA processor; write the histogram file and report.

    The report file ``<file>.json`` holds each processor's run report, the cutflows and the
    overlap removal (ITA signal-region events and weight, and how much of it the HTA took).

    Returns:
        (the ITA processor output per dataset, the ITA run report).
    """
    out_file = Path(out_file)
    datasets = [
        d
        for d in (*ITA_DATASETS, *NATURE_DATASETS, *VALIDATION_DATASETS)
        if d in catalogue.datasets
    ]
    _require(catalogue, datasets)
    doc: dict[str, Any] = {}
    hta_output: dict[str, Any] = {}
    cfg = with_d_to_kl(cfg, catalogue.datasets)  # B(D -> K_L X) keeps the number of events
    models = str(Path(models).resolve())
    with_models = _with_fingerprint(options, models)  # the model files hashed once
    if hta_cfg is not None:
        hta_cfg = with_d_to_kl(hta_cfg, catalogue.datasets)
        hta_output, doc["hta"] = _hta_run(catalogue, models, hta_cfg, client, with_models)
        cfg["overlap"] = _write_overlap(out_file.with_name("overlap.json"), hta_output, doc["hta"])
    overlap_file = [cfg["overlap"]] if cfg.get("overlap") else []
    output, report = runner.run(
        catalogue,
        datasets,
        ITAProcessor(models, cfg),
        TREE,
        client,
        int(cfg["chunksize"]),
        _with_fingerprint(with_models, *overlap_file),
    )
    pion_output: dict[str, Any] = {}
    if "pion" in cfg:
        pion_sets = [d for d in PION_DATASETS if d in catalogue.datasets]
        proc = PionProcessor(models, cfg)
        pion_output, pion_report = runner.run(
            catalogue, pion_sets, proc, TREE, client, int(cfg["chunksize"]), with_models
        )
        doc["pion"] = _report_doc(pion_report, pion_output)
    write_histogram_file(out_file, output, catalogue.datasets, hta_output, pion_output)
    doc = {
        **_report_doc(report, output),
        "overlap": {ds: out["overlap"] for ds, out in output.items()},
        **doc,
    }
    write_json(out_file.with_suffix(".json"), doc)
    return output, report


def _write_overlap(path: Path, hta_output: dict[str, Any], hta_doc: dict[str, Any]) -> str:
    """The HTA signal-region events (taken out of ``hta_output``) into ``path``.

    The ITA processor removes them (the overlap); ``hta_doc`` gets their count per dataset.
    Returns the file's absolute path.
    """
    sr = {ds: sorted(out.pop("sr_events")) for ds, out in hta_output.items()}
    write_json(path, {"sr_events": sr})
    hta_doc["sr_events"] = {ds: len(v) for ds, v in sr.items()}
    return str(path.resolve())


def _hta_run(
    catalogue: runner.Catalogue,
    models: str,
    hta_cfg: Mapping[str, Any],
    client: Any | None,
    options: runner.RunOptions,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The HTA processor over the HTA datasets: its output and its report document."""
    hta_sets = [d for d in HTA_DATASETS if d in catalogue.datasets]
    proc = hta.HTAProcessor(models, hta_cfg)
    chunksize = int(hta_cfg["chunksize"])
    output, report = runner.run(catalogue, hta_sets, proc, "hta", client, chunksize, options)
    return output, _report_doc(report, output)


def _report_doc(report: runner.RunReport, output: Mapping[str, Any]) -> dict[str, Any]:
    """A processor run's report and its cutflows per dataset (the histogram file's JSON)."""
    return {
        "report": report.as_dict(),
        "cutflows": {ds: _cutflow(out) for ds, out in output.items()},
    }


def _with_fingerprint(options: runner.RunOptions | None, *paths: str | Path) -> runner.RunOptions:
    """``options`` whose checkpoint fingerprint includes the contents of ``paths`` (models)."""
    options = options or runner.RunOptions()
    digest = hashlib.sha256(options.fingerprint.encode())
    for path in paths:
        path = Path(path)
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                digest.update(f"{f.name}:{sha256(f)}".encode())
    return options._replace(fingerprint=digest.hexdigest())


def overlap_fraction(
    overlap: Mapping[str, Mapping[str, float]],
    datasets: tuple[str, ...],
    catalogue: Mapping[str, Any],
) -> float:
    """Fraction of the ITA signal-region weight the overlap removal took, over ``datasets``.

    Simulated datasets are scaled to the on-resonance data luminosity before summing.
    """
    sr = removed = 0.0
    for ds in datasets:
        if ds not in overlap:
            continue
        scale = 1.0 if catalogue[ds].get("data") else lumi_scale(catalogue, ds, "data_on")
        sr += overlap[ds]["ita_sr_weight"] * scale
        removed += overlap[ds]["removed_weight"] * scale
    return removed / sr if sr > 0 else 0.0


def _cutflow(out: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    steps = list(out["cutflow"].axes[0])
    return {
        "weighted": dict(zip(steps, out["cutflow"].values().tolist(), strict=True)),
        "events": dict(zip(steps, out["cutflow_unweighted"].values().tolist(), strict=True)),
    }


def _require(catalogue: runner.Catalogue, datasets: list[str]) -> None:
    missing = [d for d in (SIGNAL, "data_on") if d not in datasets]
    if missing:
        raise InputError(f"{catalogue.path}: the ITA needs dataset(s) {', '.join(missing)}")


def channel_of(dataset: str) -> str:
    """The histogram channel of a dataset: ``ita_off`` for off-resonance ones, else ``ita_on``.

    >>> channel_of("ccbar_offres"), channel_of("data_off"), channel_of("signal")
    ('ita_off', 'ita_off', 'ita_on')
    >>> channel_of("nature_off")
    'ita_off'
    """
    off = dataset.endswith(("_offres", "_off"))
    return "ita_off" if off else "ita_on"


def write_histogram_file(
    path: str | Path,
    output: Mapping[str, Any],
    catalogue: Mapping[str, Any],
    hta_output: Mapping[str, Any] | None = None,
    pion_output: Mapping[str, Any] | None = None,
) -> Path:
    """Write the fit and control histograms, MC scaled to the data luminosity (atomically).

    HTA datasets are summed into the HTA fit samples (``charged`` + ``mixed`` -> ``bbbar``, ...).
    The nominal fit and loose histograms' variances include the reuse of library entries
    (:func:`knunu.processors.reuse.with_reuse`, per dataset before any sum).
    The consistency splits go to ``{channel}_{split}_{sample}_nominal`` (scaled like the fit
    histograms); ``ita_q2gen_signal_nominal`` and ``hta_q2gen_signal_nominal`` hold the signal
    MC's q2gen in the signal regions with MC weights, *not* scaled (efficiency numerators);
    ``ita_on_map_signal_nominal`` and ``hta_map_signal_nominal`` the signal fit templates
    (scaled, after the overlap removal) split by q2gen (the reinterpretation map).
    The pion-candidate sample goes to ``pion_{sample}_{dkl|other}_nominal`` (MC, scaled to the
    on-resonance data) and ``pion_data_nominal``; its events with an identified lepton also to
    ``pion_lepton_*`` (the lepton-enriched sideband).
    """
    path = Path(path)
    hta_hists = _hta_sums(hta_output or {}, catalogue)
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        for ds in sorted(output):
            if ds not in VALIDATION_DATASETS:  # its cutflow (histograms.json) is what is used
                _write_ita(f, ds, output[ds], catalogue)
        for ds in sorted(hta_output or {}):
            if "q2gen" in hta_output[ds]:
                f["hta_q2gen_signal_nominal"] = hta_output[ds]["q2gen"]
                scale = lumi_scale(catalogue, ds, "data_on")
                f["hta_map_signal_nominal"] = hta_output[ds]["map"] * scale
        for ds in sorted(pion_output or {}):
            _write_pion(f, ds, pion_output[ds], catalogue)
        for key, h in sorted(hta_hists.items()):
            kind, name = key.split("/")
            if kind == "hta_control" and name == "nature":
                continue
            if kind == "hta_control":
                f[f"hta_control_{name}_nominal"] = h
                continue
            for var in ("nominal",) if name in ("data", "nature") else hta.HIST_VARIATIONS:
                f[f"hta_{name}_{var}"] = h[{"variation": var}]
    log.info("histograms written to %s", path)
    return path


def _hta_sums(hta_output: Mapping[str, Any], catalogue: Mapping[str, Any]) -> dict[str, Any]:
    """HTA datasets scaled and summed into the HTA's samples (``{kind}/{sample}`` keys)."""
    sums: dict[str, Any] = {}
    for ds in sorted(hta_output):
        sample, is_data = dataset_kind(ds)
        name = hta.HTA_SAMPLE[sample]
        scale = 1.0 if is_data else lumi_scale(catalogue, ds, "data_on")
        for kind in ("hta", "hta_control"):
            h = hta_output[ds][kind] * scale
            if kind == "hta" and "hta_reuse" in hta_output[ds]:  # MC errors know reuse
                nominal = hta_output[ds]["hta"][{"variation": "nominal"}]
                h[{"variation": "nominal"}] = with_reuse(
                    nominal, hta_output[ds]["hta_reuse"], scale
                ).view()
            key = f"{kind}/{name}"
            sums[key] = sums[key] + h if key in sums else h
    return sums


def _write_ita(f: Any, ds: str, out: Mapping[str, Any], catalogue: Mapping[str, Any]) -> None:
    """One ITA dataset's histograms into the open file ``f``, MC scaled to its data."""
    sample, is_data = dataset_kind(ds)
    channel = channel_of(ds)
    target = "data_off" if channel == "ita_off" else "data_on"
    scale = 1.0 if is_data else lumi_scale(catalogue, ds, target)
    for var in ("nominal",) if is_data else HIST_VARIATIONS:
        # the nominal's MC errors know library-entry reuse (knunu.processors.reuse)
        reuse = var == "nominal"
        f[f"{channel}_{sample}_{var}"] = with_reuse(
            out["ita"][{"variation": var}], out.get("ita_reuse") if reuse else None, scale
        )
        if not is_data:
            f[f"{channel}_loose_{sample}_{var}"] = with_reuse(
                out["ita_loose"][{"variation": var}],
                out.get("ita_loose_reuse") if reuse else None,
                scale,
            )
    if sample == "nature":  # the fit histograms (histogram-level pseudo-data) and
        sources = out.get("nature_sources")  # its expectation per source sample
        for source in [] if sources is None else sources.axes["source"]:
            f[f"{channel}_source_{source}_nominal"] = sources[{"source": source}] * scale
        return
    f[f"{channel}_control_{sample}_nominal"] = out["ita_control"] * scale
    for split in SPLITS:
        f[f"{channel}_{split}_{sample}_nominal"] = out["ita_split"][{"split": split}] * scale
    if "q2gen" in out:
        f["ita_q2gen_signal_nominal"] = out["q2gen"]
        f[f"{channel}_map_signal_nominal"] = out["map"] * scale
    if "modes" in out:  # signal-region B Bbar by decay mode
        f[f"{channel}_modes_{sample}_nominal"] = out["modes"] * scale


def _write_pion(f: Any, ds: str, out: Mapping[str, Any], catalogue: Mapping[str, Any]) -> None:
    """One dataset's pion-candidate histograms (all, and with an identified lepton)."""
    sample, is_data = dataset_kind(ds)
    scale = 1.0 if is_data else lumi_scale(catalogue, ds, "data_on")
    for channel, leptons in (("pion", sum), ("pion_lepton", "lepton")):
        h = out["pion"][{"leptons": leptons}] * scale
        if is_data:
            f[f"{channel}_data_nominal"] = h[{"truth": sum}]
            continue
        for truth in TRUTH_CLASSES:
            f[f"{channel}_{sample}_{truth}_nominal"] = h[{"truth": truth}]
