"""Writing basf2-style event-based ntuples (TTrees) with uproot.

One entry per event: ``__experiment__``, ``__run__``, ``__event__``, ``__weight__``, event-level
branches, MC truth, and the kaon candidates as jagged ``K_*`` branches sharing the counter
``nK``, as basf2's VariablesToEventBasedTree writes them. One file holds the trees of one
production chunk (``ita`` and ``hta``). Files are written to a temporary
name and renamed only when complete, with LZ4 compression (zlib was 40x slower here) and a
UUID derived from the seed, so the same seed gives the same file content.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import awkward as ak
import numpy as np
import uproot

from knunu.rundir import atomic_path

TREE_ITA = "ita"
TREE_HTA = "hta"


def _jagged(offsets: np.ndarray, columns: Mapping[str, np.ndarray], prefix: str) -> ak.Array:
    fields = {}
    for name, values in columns.items():
        if not name.startswith(prefix):
            raise ValueError(f"candidate column {name!r} does not start with {prefix!r}")
        fields[name[len(prefix) :]] = ak.unflatten(np.asarray(values), np.diff(offsets))
    return ak.zip(fields)


class Tree(NamedTuple):
    """One event-based tree to write: per-event columns and jagged candidate collections.

    Attributes:
        columns: One value per event, by branch name.
        collections: ``prefix -> (offsets, columns)``; each column name starts with the prefix
            (e.g. ``K_p``) and the collection is written as jagged branches with the counter
            ``n<prefix without _>`` (``nK``).
    """

    columns: Mapping[str, np.ndarray]
    collections: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]]


def write_ntuple(path: str | Path, trees: Mapping[str, Tree], seed: int) -> Path:
    """Write event-based TTrees into one ROOT file, atomically.

    Args:
        path: Destination ``.root`` file (appears only when complete).
        trees: Trees by name (e.g. ``ita``, ``hta``).
        seed: The seed of this file (fixes the ROOT file UUID).

    Returns:
        The path written.
    """
    file_uuid = uuid.UUID(int=(seed * 0x9E3779B97F4A7C15) % (1 << 128))
    with (
        atomic_path(path) as tmp,
        uproot.recreate(tmp, compression=uproot.LZ4(1), uuid_function=lambda: file_uuid) as f,
    ):
        for name, tree in trees.items():
            branches = _branches(tree)
            f.mktree(name, {k: _branch_type(v) for k, v in branches.items()})
            if branches and len(next(iter(branches.values()))):
                f[name].extend(branches)
    return Path(path)


def _branches(tree: Tree) -> dict[str, object]:
    lengths = {len(np.asarray(v)) for v in tree.columns.values()}
    lengths |= {len(off) - 1 for off, _ in tree.collections.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of one tree have different lengths: {sorted(lengths)}")
    branches: dict[str, object] = {k: np.asarray(v) for k, v in tree.columns.items()}
    for prefix, (offsets, columns) in tree.collections.items():
        branches[prefix.rstrip("_")] = _jagged(offsets, columns, prefix)
    return branches


def _branch_type(values: object) -> object:
    if isinstance(values, ak.Array):
        return values.type
    return np.asarray(values).dtype
