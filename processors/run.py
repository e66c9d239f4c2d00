"""Running processors over a catalogue: filesets, coffea Runner on Dask, event accounting.

Every run checks that the events each dataset's processor saw equal the entries its files hold
(from the catalogue, cross-checked against the files themselves); a failing chunk fails the run
with the file named, and nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from coffea import processor

from knunu.errors import InputError, ProcessingError
from knunu.processors.schema import Belle2Schema

log = logging.getLogger(__name__)


def dataset_kind(dataset: str) -> tuple[str, bool]:
    """(sample, is_data) of a catalogue dataset name.

    >>> dataset_kind("ccbar_offres"), dataset_kind("data_on")
    (('ccbar', False), ('data', True))
    """
    if dataset.startswith("data_"):
        return "data", True
    return dataset.removesuffix("_offres"), False


class Catalogue(NamedTuple):
    """The simulation's (or a user's) dataset catalogue."""

    path: Path
    datasets: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> Catalogue:
        """Read ``catalogue.json``; file paths are taken as written (absolute or cwd-relative).

        Raises:
            InputError: missing or malformed catalogue.
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            datasets = doc["datasets"]
            for entry in datasets.values():
                for f in entry["files"]:
                    f["path"], f["entries_ita"], f["entries_hta"]
        except FileNotFoundError:
            raise InputError(f"{path}: catalogue not found (run `knunu simulate` first)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a dataset catalogue ({exc!r})") from None
        return cls(path, datasets)

    def fileset(self, tree: str, datasets: list[str] | None = None) -> dict[str, Any]:
        """A coffea fileset of the given datasets (default all) for one tree."""
        names = list(self.datasets) if datasets is None else datasets
        out = {}
        for name in names:
            if name not in self.datasets:
                raise InputError(f"{self.path}: dataset '{name}' is not in the catalogue")
            files = {f["path"]: tree for f in self.datasets[name]["files"]}
            out[name] = {"files": files}
        return out

    def entries(self, tree: str, dataset: str) -> int:
        """Entries the catalogue says the dataset's files hold in ``tree``."""
        return sum(int(f[f"entries_{tree}"]) for f in self.datasets[dataset]["files"])


class RunReport(NamedTuple):
    """What one processor run did (a run with a failed chunk raises instead of reporting)."""

    processor: str
    events_in: dict[str, int]
    events_processed: dict[str, int]
    chunks: int
    wall_seconds: float
    process_seconds: float

    @property
    def throughput_hz(self) -> float:
        """Events processed per wall-clock second."""
        return sum(self.events_processed.values()) / max(self.wall_seconds, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**self._asdict(), "throughput_hz": self.throughput_hz}


def run(
    fileset: Mapping[str, Any],
    proc: processor.ProcessorABC,
    tree: str,
    expected: Mapping[str, int],
    client: Any | None = None,
    chunksize: int = 200_000,
) -> tuple[dict[str, Any], RunReport]:
    """Run ``proc`` over ``fileset`` and account for every event.

    Args:
        fileset: coffea fileset (datasets -> files -> tree).
        proc: The processor; its output must hold ``{dataset: {"events": n, "chunks": 1, ...}}``
            per chunk (summed by the merge).
        tree: The tree name.
        expected: Entries per dataset the inputs hold (from the catalogue).
        client: A ``distributed.Client`` (DaskExecutor); ``None`` runs in this process.
        chunksize: Entries per chunk.

    Raises:
        ProcessingError: a chunk failed (file named), or a dataset's processed events differ
            from its entries.
    """
    executor: Any
    if client is None:
        executor = processor.IterativeExecutor(status=False)
    else:
        executor = processor.DaskExecutor(client=client, status=False, treereduction=8)
    runner = processor.Runner(
        executor=executor, schema=Belle2Schema, chunksize=chunksize, savemetrics=True
    )
    start = time.perf_counter()
    try:
        output, metrics = runner(fileset, processor_instance=proc, treename=tree)
    except Exception as exc:  # coffea wraps worker errors; name what failed and stop
        raise ProcessingError(f"{type(proc).__name__}: a chunk failed: {_first_line(exc)}") from exc
    wall = time.perf_counter() - start
    processed = {ds: int(output.get(ds, {}).get("events", 0)) for ds in fileset}
    report = RunReport(
        type(proc).__name__,
        {ds: int(expected[ds]) for ds in fileset},
        processed,
        sum(int(output.get(ds, {}).get("chunks", 0)) for ds in fileset),
        wall,
        float(metrics.get("processtime", 0.0)),
    )
    lost = {ds: (report.events_in[ds], n) for ds, n in processed.items() if n != expected[ds]}
    if lost:
        ds, (want, got) = next(iter(lost.items()))
        raise ProcessingError(
            f"{type(proc).__name__}: dataset {ds} processed {got} of {want} events "
            f"({len(lost)} dataset(s) incomplete)"
        )
    log.info(
        "%s: %d events in %d chunks, %.1f s (%.0f Hz)",
        report.processor,
        sum(processed.values()),
        report.chunks,
        wall,
        report.throughput_hz,
    )
    return output, report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def expected_entries(catalogue: Catalogue, tree: str, datasets: list[str]) -> dict[str, int]:
    """Entries per dataset from the catalogue, each file checked against the file itself.

    Raises:
        InputError: a file is missing, unreadable, or holds another number of entries.
    """
    import uproot

    out = {}
    for ds in datasets:
        total = 0
        for f in catalogue.datasets[ds]["files"]:
            want = int(f[f"entries_{tree}"])
            try:
                with uproot.open(f["path"]) as rf:
                    got = rf[tree].num_entries
            except FileNotFoundError:
                raise InputError(f"{f['path']}: file not found") from None
            except Exception as exc:  # not ROOT, truncated, tree missing
                raise InputError(f"{f['path']}: cannot read tree '{tree}' ({exc})") from None
            if got != want:
                raise InputError(f"{f['path']}: {got} entries in '{tree}', catalogue says {want}")
            total += want
        out[ds] = total
    return out
