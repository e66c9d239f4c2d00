"""Training tables: the selected events' inputs, weights and truth, as parquet, on the cluster.

One processor for both analyses: ``analysis`` picks the selection from :data:`SELECTIONS`.

Each chunk writes one parquet file named after its dataset, source file and entry range, so a
retried chunk overwrites its own file and never duplicates rows. The output accounts for every
event read: ``events`` (entries read) and ``rows`` (selected, written) per dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from coffea import processor

from knunu.processors.hta import select_hta
from knunu.processors.selection import select
from knunu.rundir import atomic_path

#: Analysis -> its selection: (events, cuts, names) -> (step masks, columns of the kept events).
SELECTIONS: dict[str, Callable[..., Any]] = {"ita": select, "hta": select_hta}


class TableProcessor(processor.ProcessorABC):
    """Selected events -> parquet files (one per chunk) under ``out_dir/<dataset>/``."""

    def __init__(
        self, out_dir: str, analysis: str, cuts: Mapping[str, Any], names: Sequence[str]
    ) -> None:
        self.out_dir = str(out_dir)
        self.analysis = analysis
        self.cuts = dict(cuts)
        self.names = tuple(dict.fromkeys(names))

    def process(self, events: ak.Array) -> dict[str, Any]:
        """Select one chunk and write its table."""
        meta = events.metadata
        dataset = meta["dataset"]
        sel = SELECTIONS[self.analysis](events, self.cuts, self.names)
        key = f"{meta['fileuuid']}-{meta['entrystart']}-{meta['entrystop']}"
        stem = hashlib.sha256(f"{meta['filename']}|{key}".encode()).hexdigest()[:16]
        path = Path(self.out_dir) / dataset / f"{stem}.parquet"
        table = pa.table({k: np.ascontiguousarray(v) for k, v in sel.columns.items()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return {
            dataset: {
                "events": len(events),
                "chunks": 1,
                "rows": len(sel.columns["__event__"]),
                "files": [str(path)],
            }
        }

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Nothing to do after merging."""
        return accumulator
