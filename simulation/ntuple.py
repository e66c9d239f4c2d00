"""Writing basf2-style event-based ntuples (TTrees) with uproot.

One entry per event: ``__experiment__``, ``__run__``, ``__event__``, ``__weight__``, event-level
branches, MC truth, and the kaon candidates as jagged ``K_*`` branches sharing the counter
``nK``, as basf2's VariablesToEventBasedTree writes them. Files are written to a temporary
name and renamed only when complete, with LZ4 compression (zlib was 40x slower here) and a
UUID derived from the seed, so the same seed gives the same file content.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from knunu.rundir import atomic_path

TREE_ITA = "ita"


def _jagged(offsets: np.ndarray, columns: Mapping[str, np.ndarray], prefix: str) -> ak.Array:
    fields = {}
    for name, values in columns.items():
        if not name.startswith(prefix):
            raise ValueError(f"candidate column {name!r} does not start with {prefix!r}")
        fields[name[len(prefix) :]] = ak.unflatten(np.asarray(values), np.diff(offsets))
    return ak.zip(fields)


def write_ita_ntuple(
    path: str | Path,
    header: Mapping[str, np.ndarray],
    event: Mapping[str, np.ndarray],
    candidates: Mapping[str, np.ndarray],
    candidate_offsets: np.ndarray,
    seed: int,
) -> Path:
    """Write one ITA ntuple file atomically.

    Args:
        path: Destination ``.root`` file.
        header: ``__experiment__``, ``__run__``, ``__event__``, ``__weight__`` and MC-truth
            columns (one value per event).
        event: Event-level reconstructed columns.
        candidates: Per-candidate ``K_*`` columns, grouped by ``candidate_offsets``.
        candidate_offsets: Candidate offsets per event.
        seed: The seed of this file (fixes the ROOT file UUID).

    Returns:
        The path written.
    """
    n = len(candidate_offsets) - 1
    branches: dict[str, object] = {}
    for source in (header, event):
        for name, values in source.items():
            values = np.asarray(values)
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} entries, expected {n}")
            branches[name] = values
    branches["K"] = _jagged(candidate_offsets, candidates, "K_")
    file_uuid = uuid.UUID(int=(seed * 0x9E3779B97F4A7C15) % (1 << 128))
    with (
        atomic_path(path) as tmp,
        uproot.recreate(tmp, compression=uproot.LZ4(1), uuid_function=lambda: file_uuid) as f,
    ):
        f.mktree(TREE_ITA, {k: _branch_type(v) for k, v in branches.items()})
        f[TREE_ITA].extend(branches)
    return Path(path)


def _branch_type(values: object) -> object:
    if isinstance(values, ak.Array):
        return values.type
    return np.asarray(values).dtype
