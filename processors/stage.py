"""The ITA stages on a cluster: training tables -> training -> histograms (file contract).

``make_tables`` and ``make_histograms`` run coffea processors over the catalogue's datasets on a
Dask client (or in-process), account for every event, and write their outputs atomically with a
run report. The histogram file follows the contract of :mod:`knunu.fits.build`:
``ita_on``/``ita_off`` keys ``{channel}_{sample}_{variation}``, simulated samples scaled to the
data luminosity (on or off resonance), Weight storage.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uproot

from knunu.errors import InputError
from knunu.mva.train import BACKGROUNDS, OFFRES_MC, SIGNAL, bdt2_features, lumi_scale
from knunu.processors import run as runner
from knunu.processors.ita import HIST_VARIATIONS, ITAProcessor, dataset_kind
from knunu.processors.tables import TableProcessor
from knunu.rundir import atomic_path, write_json

log = logging.getLogger(__name__)

TREE = "ita"
#: Datasets of the ITA: simulated on- and off-resonance samples and the pseudo-data.
ITA_DATASETS = (SIGNAL, *BACKGROUNDS, *OFFRES_MC, "data_on", "data_off")


def make_tables(
    catalogue: runner.Catalogue,
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    client: Any | None = None,
) -> runner.RunReport:
    """Write the training tables of every ITA dataset; returns the run report.

    Raises:
        InputError: a dataset or file of the catalogue is missing or inconsistent.
        ProcessingError: a chunk failed or events went missing.
    """
    datasets = [d for d in ITA_DATASETS if d in catalogue.datasets]
    _require(catalogue, datasets)
    expected = runner.expected_entries(catalogue, TREE, datasets)
    proc = TableProcessor(str(Path(out_dir).resolve()), cfg["selection"], bdt2_features(cfg))
    output, report = runner.run(
        catalogue.fileset(TREE, datasets), proc, TREE, expected, client, int(cfg["chunksize"])
    )
    rows = {ds: int(output[ds]["rows"]) for ds in datasets}
    write_json(Path(out_dir) / "tables.json", {"report": report.as_dict(), "rows": rows})
    return report


def make_histograms(
    catalogue: runner.Catalogue,
    cfg: Mapping[str, Any],
    models: str | Path,
    out_file: str | Path,
    client: Any | None = None,
) -> tuple[dict[str, Any], runner.RunReport]:
    """Run the ITA processor and write the histogram file and its report (``<file>.json``).

    Returns:
        (the processor output per dataset, the run report).
    """
    datasets = [d for d in ITA_DATASETS if d in catalogue.datasets]
    _require(catalogue, datasets)
    expected = runner.expected_entries(catalogue, TREE, datasets)
    proc = ITAProcessor(str(Path(models).resolve()), cfg)
    output, report = runner.run(
        catalogue.fileset(TREE, datasets), proc, TREE, expected, client, int(cfg["chunksize"])
    )
    write_histogram_file(out_file, output, catalogue.datasets)
    cutflows = {ds: _cutflow(out) for ds, out in output.items()}
    write_json(
        Path(out_file).with_suffix(".json"), {"report": report.as_dict(), "cutflows": cutflows}
    )
    return output, report


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
    """
    return "ita_off" if dataset.endswith("_offres") or dataset == "data_off" else "ita_on"


def write_histogram_file(
    path: str | Path, output: Mapping[str, Any], catalogue: Mapping[str, Any]
) -> Path:
    """Write the fit and control histograms, MC scaled to the data luminosity (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp, uproot.recreate(tmp) as f:
        for ds in sorted(output):
            out = output[ds]
            sample, is_data = dataset_kind(ds)
            channel = channel_of(ds)
            target = "data_off" if channel == "ita_off" else "data_on"
            scale = 1.0 if is_data else lumi_scale(catalogue, ds, target)
            for var in ("nominal",) if is_data else HIST_VARIATIONS:
                f[f"{channel}_{sample}_{var}"] = out["ita"][{"variation": var}] * scale
            f[f"{channel}_control_{sample}_nominal"] = out["ita_control"] * scale
    log.info("histograms written to %s", path)
    return path
