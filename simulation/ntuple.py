"""Writing basf2-style ntuples (TTrees) with uproot, in either of basf2's layouts.

``event`` (VariablesToEventBasedTree): one entry per event: ``__experiment__``, ``__run__``,
``__event__``, ``__weight__``, event-level branches, MC truth, and the kaon candidates as jagged
``K_*`` branches sharing the counter ``nK``. ``candidate`` (VariablesToNtuple): one row per
candidate with ``__candidate__`` and ``__ncandidates__``, event-level branches repeated on every
row of the event; an event without a candidate writes no row, as in basf2. One file holds the
trees of one production chunk (``ita`` and ``hta``). Files are written to a temporary
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
#: Candidate collections: analysis-name prefix -> collection (``K_q2rec`` -> ``events.K.q2rec``;
#: the readers, :mod:`knunu.processors.layouts`, take the same names from basf2's files).
COLLECTIONS = {"K_": "K", "Btag_": "Btag"}


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


#: Layouts this writer knows (``simulation.layout``).
LAYOUTS = ("event", "candidate")


def write_ntuple(
    path: str | Path,
    trees: Mapping[str, Tree],
    seed: int,
    layout: str = "event",
    compression: object | None = None,
) -> dict[str, int]:
    """Write TTrees into one ROOT file, atomically.

    Args:
        path: Destination ``.root`` file (appears only when complete).
        trees: Trees by name (e.g. ``ita``, ``hta``).
        seed: The seed of this file (fixes the ROOT file UUID).
        layout: ``event`` or ``candidate`` (basf2's two layouts).
        compression: An uproot compression (default LZ4 level 1).

    Returns:
        The events written per tree (in the candidate layout, those with a candidate).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown ntuple layout {layout!r} (one of {', '.join(LAYOUTS)})")
    file_uuid = uuid.UUID(int=(seed * 0x9E3779B97F4A7C15) % (1 << 128))
    compression = uproot.LZ4(1) if compression is None else compression
    events = {}
    with (
        atomic_path(path) as tmp,
        uproot.recreate(tmp, compression=compression, uuid_function=lambda: file_uuid) as f,
    ):
        for name, tree in trees.items():
            branches = _branches(tree) if layout == "event" else candidate_rows(tree)
            f.mktree(name, {k: _branch_type(v) for k, v in branches.items()})
            rows = len(next(iter(branches.values()))) if branches else 0
            if rows:
                f[name].extend(branches)
            events[name] = _events(tree, layout)
    return events


def _events(tree: Tree, layout: str) -> int:
    n = _length(tree)
    if layout == "event" or not tree.collections:
        return n
    (offsets, _), *_ = tree.collections.values()
    return int(np.count_nonzero(np.diff(offsets)))


def _length(tree: Tree) -> int:
    lengths = {len(np.asarray(v)) for v in tree.columns.values()}
    lengths |= {len(off) - 1 for off, _ in tree.collections.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of one tree have different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def candidate_rows(tree: Tree) -> dict[str, np.ndarray]:
    """A tree as basf2's VariablesToNtuple writes it: one row per candidate.

    Event-level columns repeat on every row of their event; ``__candidate__`` counts the
    candidates of an event from 0 and ``__ncandidates__`` holds their number. Events without a
    candidate have no row.

    >>> t = Tree({"__event__": np.array([1, 2, 3])},
    ...          {"K_": (np.array([0, 2, 2, 3]), {"K_p": np.array([.1, .2, .3])})})
    >>> {k: v.tolist() for k, v in candidate_rows(t).items()}  # doctest: +NORMALIZE_WHITESPACE
    {'__event__': [1, 1, 3], 'K_p': [0.1, 0.2, 0.3], '__candidate__': [0, 1, 0],
     '__ncandidates__': [2, 2, 1]}
    """
    _length(tree)
    if len(tree.collections) != 1:
        raise ValueError("a candidate-based tree has exactly one candidate collection")
    (offsets, columns), *_ = tree.collections.values()
    counts = np.diff(np.asarray(offsets))
    rows: dict[str, np.ndarray] = {
        k: np.repeat(np.asarray(v), counts) for k, v in tree.columns.items()
    }
    rows |= {k: np.asarray(v) for k, v in columns.items()}
    first = np.repeat(np.asarray(offsets[:-1]) - offsets[0], counts)
    rows["__candidate__"] = (np.arange(int(counts.sum())) - first).astype(np.int32)
    rows["__ncandidates__"] = np.repeat(counts, counts).astype(np.int32)
    return rows


def _branches(tree: Tree) -> dict[str, object]:
    _length(tree)
    branches: dict[str, object] = {k: np.asarray(v) for k, v in tree.columns.items()}
    for prefix, (offsets, columns) in tree.collections.items():
        branches[prefix.rstrip("_")] = _jagged(offsets, columns, prefix)
    return branches


def _branch_type(values: object) -> object:
    if isinstance(values, ak.Array):
        return values.type
    return np.asarray(values).dtype


def read_event_tree(path: str | Path, tree: str, keep_empty: bool = True) -> Tree:
    """An event-based tree of a file back as a :class:`Tree` (the inverse of writing it).

    Rewriting it with ``layout="candidate"`` gives the same events in basf2's other layout.

    Args:
        path: The ROOT file.
        tree: The tree's name.
        keep_empty: Keep events without a candidate (``False``: drop them, as the candidate
            layout must).
    """
    with uproot.open(path) as rf:
        arrays = rf[tree].arrays(library="ak")
    counters = {f"n{c}" for c in COLLECTIONS.values()}
    prefix = next(p for p in COLLECTIONS if any(f.startswith(p) for f in arrays.fields))
    counts = ak.to_numpy(arrays[f"n{COLLECTIONS[prefix]}"])
    keep = np.ones(len(counts), bool) if keep_empty else counts > 0
    columns = {
        f: ak.to_numpy(arrays[f])[keep]
        for f in arrays.fields
        if f not in counters and not f.startswith(prefix)
    }
    candidates = {
        f: ak.to_numpy(ak.flatten(arrays[f][keep])) for f in arrays.fields if f.startswith(prefix)
    }
    offsets = np.concatenate([[0], np.cumsum(counts[keep])])
    return Tree(columns, {prefix: (offsets, candidates)})
