"""Input layouts of basf2 ntuples, and the names of their variables.

basf2 writes analysis ntuples in two layouts (a registry, :data:`LAYOUTS`):

- ``event`` (VariablesToEventBasedTree, what knunu's simulation writes by default): one entry per
  event, event-level branches and jagged candidate branches ``K_*`` (``Btag_*``) with their
  counter ``nK`` (``nBtag``). basf2's own module names the counter ``__ncandidates__`` and the
  candidate variables by their basf2 names: alias them (``K_p: p``, ``nK: __ncandidates__``);
- ``candidate`` (VariablesToNtuple, what most analyses write): one row per candidate, with
  ``__candidate__`` and ``__ncandidates__``; event-level variables repeat on every row of the
  event, and an event without a candidate has no row at all.

Both are read into the same NanoEvents (``events.K.q2rec``, ``events.nK``, ``events.E_tot``), so
the processors do not know which layout a file has. Rows of one event must be contiguous; chunks
of a candidate tree start and end at event boundaries (:func:`inspect_tree` finds them).

Variables are named by the analysis (``K_pstar``); a dataset's ``aliases`` map those names to
the file's basf2 names (``useCMSFrame(p)``), which basf2 stores with its ROOT-compatible escaping
(:func:`root_compatible`: ``useCMSFrame__bop__bc``); the dataset's weight branch becomes
``__weight__``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import awkward as ak
import numpy as np

from knunu.errors import InputError
from knunu.simulation.ntuple import COLLECTIONS

log = logging.getLogger(__name__)

#: Event identity, in both layouts (with ``__production__`` where the file has it: MC jobs of
#: different productions may share experiment, run and event numbers).
ID_BRANCHES = ("__experiment__", "__run__", "__event__")
PRODUCTION = "__production__"
#: The candidate layout's bookkeeping branches.
CANDIDATE_BRANCHES = ("__candidate__", "__ncandidates__")

#: basf2's substitutions for characters ROOT dislikes in branch names
#: (framework/utilities/src/MakeROOTCompatible.cc); other characters outside [A-Za-z0-9_] go.
_BASF2_ESCAPES = {
    " ": "__sp", ",": "__cm", ":": "__cl", "=": "__eq", "<": "__st", ">": "__gt", ".": "__pt",
    "+": "__pl", "-": "__mi", "(": "__bo", ")": "__bc", "{": "__co", "}": "__cc", "[": "__so",
    "]": "__sc", "`": "__to", "\u00b4": "__tc", "^": "__ha", "\u00b0": "__ci", "$": "__do",
    "\u00a7": "__pa", "%": "__pr", "!": "__em", "?": "__qm", ";": "__sm", "#": "__hs", "*": "__mu",
    "/": "__sl", "\\": "__bl", "'": "__sq", '"': "__dq", "~": "__ti", "|": "__pi", "&": "__am",
    "@": "__at",
}  # fmt: skip
_NOT_ROOT = re.compile(r"[^A-Za-z0-9_]")


def mc_only(name: str) -> bool:
    """Whether an analysis name is MC truth, which data files do not have.

    >>> [mc_only(n) for n in ("mcDtoKL", "K_mcPDG", "Btag_mcCorrect", "q2gen", "E_miss")]
    [True, True, True, True, False]
    """
    local = name.split("_", 1)[1] if "_" in name[1:] else name
    return name.startswith("mc") or local.startswith("mc") or name in ("nKL", "q2gen")


def root_compatible(name: str) -> str:
    """A basf2 variable name as basf2 stores it as a branch (``makeROOTCompatible``).

    >>> root_compatible("useCMSFrame(p)"), root_compatible("daughter(0, kaonID)")
    ('useCMSFrame__bop__bc', 'daughter__bo0__cm__spkaonID__bc')
    >>> root_compatible(root_compatible("cosTheta"))  # escaping twice is safe
    'cosTheta'
    """
    for char, code in _BASF2_ESCAPES.items():
        name = name.replace(char, code)
    return _NOT_ROOT.sub("", name)


class Source(NamedTuple):
    """How the files of a dataset are read: layout, tree, variable names and weights.

    Attributes:
        layout: ``event`` or ``candidate`` (:data:`LAYOUTS`).
        trees: ``(analysis tree, the file's tree name)`` pairs where the names differ.
        aliases: ``(analysis name, basf2 name)`` pairs; the basf2 name is escaped as basf2
            stores it. Branches without an alias keep their names.
        weight_branch: The branch holding the per-event (candidate) MC weight.
    """

    layout: str = "event"
    trees: tuple[tuple[str, str], ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    weight_branch: str = "__weight__"

    @classmethod
    def of(cls, dataset: Mapping[str, Any], file: Mapping[str, Any], tree: str) -> Source:
        """How one catalogue file's ``tree`` is read: the file's keys, else its dataset's.

        ``aliases`` map analysis names to basf2 names for every tree, or per tree
        (``{"ita": {...}, "hta": {...}}``); both may be combined.
        """

        def get(key: str, default: Any) -> Any:
            return file.get(key, dataset.get(key, default))

        table = get("aliases", {})
        aliases = {k: v for k, v in table.items() if isinstance(v, str)}
        aliases |= table.get(tree, {}) if isinstance(table.get(tree), Mapping) else {}
        return cls(
            layout=get("layout", "event"),
            trees=tuple(sorted(get("trees", {}).items())),
            aliases=tuple(sorted(aliases.items())),
            weight_branch=get("weight_branch", "__weight__"),
        )

    def file_tree(self, tree: str) -> str:
        """The file's name of the analysis tree ``tree``."""
        return dict(self.trees).get(tree, tree)

    def renames(self) -> dict[str, str]:
        """File branch -> analysis name, for every alias and the weight branch.

        Raises:
            ValueError: two analysis names read the same branch.
        """
        pairs = [(root_compatible(basf2), name) for name, basf2 in self.aliases]
        if self.weight_branch != "__weight__":
            pairs.append((root_compatible(self.weight_branch), "__weight__"))
        out: dict[str, str] = {}
        for branch, name in pairs:
            if out.setdefault(branch, name) != name:
                raise ValueError(
                    f"aliases '{out[branch]}' and '{name}' both read branch '{branch}'"
                )
        return out


class FileLayout(NamedTuple):
    """What :func:`inspect_tree` found in one file's tree.

    Attributes:
        names: The analysis names the tree provides (after aliases).
        events: Events in it (rows of an event-based tree; distinct events of a candidate one).
        starts: Candidate layout: the first row of every event, and ``rows`` at the end.
        ranges: Per (production, experiment, run) of the file, its lowest and highest event
            number (:data:`RANGE`): files whose ranges overlap are compared event by event.
    """

    names: frozenset[str]
    events: int
    starts: np.ndarray | None
    ranges: np.ndarray


#: An event's identity.
ID = np.dtype([("p", "<i8"), ("e", "<i8"), ("r", "<i8"), ("v", "<i8")])
#: The event numbers a file holds of one run.
RANGE = np.dtype([("p", "<i8"), ("e", "<i8"), ("r", "<i8"), ("lo", "<i8"), ("hi", "<i8")])


def _ids(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    out = np.zeros(len(arrays["__event__"]), dtype=ID)
    for field, branch in zip(("e", "r", "v"), ID_BRANCHES, strict=True):
        out[field] = arrays[branch]
    if PRODUCTION in arrays:
        out["p"] = arrays[PRODUCTION]
    return out


def sort_ids(ids: np.ndarray) -> np.ndarray:
    """Event identities in order; fast for a file of one run.

    Sorting a structured array by its fields is 10x slower than sorting its event numbers.

    >>> ids = np.array([(0, 1, 7, 5), (0, 1, 7, 2)], dtype=ID)
    >>> sort_ids(ids)["v"].tolist(), sort_ids(np.concatenate([ids, ids[:1]]))["v"].tolist()
    ([2, 5], [2, 5, 5])
    """
    if not len(ids):
        return ids
    run = ids[["p", "e", "r"]]
    if (run == run[0]).all():
        v = ids["v"]
        return ids if (v[1:] > v[:-1]).all() else ids[np.argsort(v, kind="stable")]
    return ids[np.lexsort((ids["v"], ids["r"], ids["e"], ids["p"]))]


def _ranges(ids: np.ndarray) -> np.ndarray:
    """Lowest and highest event number per run of sorted ``ids``."""
    if not len(ids):
        return np.zeros(0, dtype=RANGE)
    run = ids[["p", "e", "r"]]
    first = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    last = np.r_[first[1:], len(ids)] - 1
    out = np.zeros(len(first), dtype=RANGE)
    for f in ("p", "e", "r"):
        out[f] = ids[f][first]
    out["lo"], out["hi"] = ids["v"][first], ids["v"][last]
    return out


def _analysis_names(keys: list[str], source: Source, where: str) -> dict[str, str]:
    """Analysis name -> file branch; every alias must name a branch that is there."""
    try:
        renames = source.renames()
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    have = set(keys)
    for branch, name in renames.items():
        if branch not in have:
            what = "weight branch" if name == "__weight__" else f"alias of '{name}'"
            raise InputError(f"{where}: no branch '{branch}' ({what})")
    out = {renames.get(k, k): k for k in keys if not (k in renames.values() and k not in renames)}
    return out


def inspect_tree(tree: Any, path: str, source: Source) -> FileLayout:
    """Check a tree against its layout; its names, events and (candidate) event boundaries.

    Raises:
        InputError: an alias or the weight branch names a missing branch, the event identity
            or the candidate bookkeeping is missing, the rows of one event are not contiguous,
            ``__ncandidates__`` or ``__candidate__`` disagree with the rows, or an event
            appears twice.
    """
    import uproot

    where = f"{path}: tree '{tree.name}'"
    if not isinstance(tree, uproot.TTree):
        raise InputError(f"{where}: a {type(tree).__name__}, not a TTree (basf2 writes TTrees)")
    keys = list(tree.keys())
    names = _analysis_names(keys, source, where)
    layout = LAYOUTS.get(source.layout)
    if layout is None:
        raise InputError(f"{where}: unknown layout '{source.layout}' (one of {sorted(LAYOUTS)})")
    need = ID_BRANCHES + (CANDIDATE_BRANCHES if source.layout == "candidate" else ())
    if missing := [b for b in need if b not in names]:
        raise InputError(
            f"{where}: no {', '.join(missing)} (not a basf2 {source.layout}-based tree)"
        )
    starts, ids = _read_ids(tree, names, source.layout, where)
    order = sort_ids(ids)
    if (dup := np.flatnonzero(order[1:] == order[:-1])).size:
        raise InputError(
            f"{where}: event {describe(order[dup[0]])} appears more than once "
            "(its rows are not contiguous, or it was written twice)"
        )
    return FileLayout(frozenset(names), len(ids), starts, _ranges(order))


def _read_ids(
    tree: Any, names: Mapping[str, str], layout: str, where: str
) -> tuple[np.ndarray | None, np.ndarray]:
    """(candidate layout: each event's first row; every event's :data:`ID`)."""
    need = ID_BRANCHES + ((PRODUCTION,) if PRODUCTION in names else ())
    if layout == "candidate":
        need += CANDIDATE_BRANCHES
    arrays = tree.arrays([names[b] for b in need], library="np", how=dict)
    arrays = {b: arrays[names[b]] for b in need}
    if layout == "event":
        return None, _ids(arrays)
    starts = event_starts(arrays, where)
    first_rows = starts[:-1]
    return starts, _ids({b: arrays[b][first_rows] for b in arrays if b not in CANDIDATE_BRANCHES})


def file_ids(path: str, tree: str, source: Source) -> np.ndarray:
    """Every event's :data:`ID` in one file's tree (for comparing files whose ranges overlap)."""
    import uproot

    with uproot.open(path) as rf:
        t = rf[source.file_tree(tree)]
        where = f"{path}: tree '{t.name}'"
        names = _analysis_names(list(t.keys()), source, where)
        return _read_ids(t, names, source.layout, where)[1]


def describe(event: np.void) -> str:
    """``(experiment e, run r, event v)``, with the production where there is one."""
    p, e, r, v = (int(x) for x in event)
    production = f"production {p}, " if p else ""
    return f"({production}experiment {e}, run {r}, event {v})"


def overlapping(ranges: Mapping[str, np.ndarray]) -> list[str]:
    """Files holding event numbers of one run in overlapping ranges (in the given order).

    >>> a = np.array([(0, 1, 7, 0, 99)], dtype=RANGE)
    >>> b = np.array([(0, 1, 7, 100, 199), (0, 1, 8, 0, 5)], dtype=RANGE)
    >>> overlapping({"a": a, "b": b}), overlapping({"a": a, "b": a.copy()})
    ([], ['a', 'b'])
    """
    paths = list(ranges)
    every = np.concatenate([ranges[p] for p in paths]) if paths else np.zeros(0, RANGE)
    owner = np.repeat(np.arange(len(paths)), [len(ranges[p]) for p in paths])
    order = np.lexsort((every["lo"], every["r"], every["e"], every["p"]))
    every, owner = every[order], owner[order]
    suspects: set[int] = set()
    reach, holder, run = None, -1, None
    for k in range(len(every)):
        key = tuple(every[["p", "e", "r"]][k])
        if key != run:
            run, reach, holder = key, every["hi"][k], owner[k]
            continue
        if every["lo"][k] <= reach and owner[k] != holder:
            suspects |= {int(owner[k]), int(holder)}
        if every["hi"][k] > reach:
            reach, holder = every["hi"][k], owner[k]
    return [paths[i] for i in sorted(suspects)]


def event_starts(arrays: Mapping[str, np.ndarray], where: str) -> np.ndarray:
    """First row of every event of candidate-layout rows (and the row count at the end).

    Raises:
        InputError: ``__ncandidates__`` or ``__candidate__`` disagree with the rows.

    >>> rows = {"__experiment__": [1] * 4, "__run__": [7] * 4, "__event__": [3, 3, 5, 8],
    ...         "__candidate__": [0, 1, 0, 0], "__ncandidates__": [2, 2, 1, 1]}
    >>> event_starts({k: np.array(v) for k, v in rows.items()}, "f").tolist()
    [0, 2, 3, 4]
    """
    n = len(arrays["__event__"])
    new = np.ones(n, dtype=bool)
    if n:
        same = np.ones(n - 1, dtype=bool)
        for b in (*ID_BRANCHES, *((PRODUCTION,) if PRODUCTION in arrays else ())):
            same &= arrays[b][1:] == arrays[b][:-1]
        new[1:] = ~same
    starts = np.append(np.flatnonzero(new), n)
    counts = np.diff(starts)
    ncand = np.asarray(arrays["__ncandidates__"])
    if (bad := np.flatnonzero(ncand != np.repeat(counts, counts))).size:
        row = int(bad[0])
        raise InputError(
            f"{where}: __ncandidates__ is {int(ncand[row])} at row {row}, but its event has "
            f"{int(counts[np.searchsorted(starts, row, side='right') - 1])} contiguous row(s)"
        )
    index = np.arange(n) - np.repeat(starts[:-1], counts)
    cand = np.asarray(arrays["__candidate__"])
    if (bad := np.flatnonzero(cand != index)).size:
        row = int(bad[0])
        raise InputError(
            f"{where}: __candidate__ is {int(cand[row])} at row {row}, expected {int(index[row])}"
            " (rows of an event out of order or missing)"
        )
    return starts


def duplicate_events(ids: Mapping[str, np.ndarray]) -> tuple[str, str, str] | None:
    """Two files of one dataset holding the same event: (file, other file, the event)."""
    if len(ids) < 2:
        return None
    paths = list(ids)
    every = np.concatenate([ids[p] for p in paths])
    owner = np.repeat(np.arange(len(paths)), [len(ids[p]) for p in paths])
    order = np.argsort(every, kind="stable")
    sorted_ids = every[order]
    if not (dup := np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])).size:
        return None
    k = int(dup[0])
    a, b = sorted(int(owner[order[j]]) for j in (k, k + 1))
    return paths[a], paths[b], describe(sorted_ids[k])


# ---------------------------------------------------------------------------- reading chunks


def _preloaded(names: Mapping[str, str], wanted: frozenset[str]) -> list[str]:
    """The file's branches of the ``wanted`` analysis names, and their collections' counters.

    They are read in one request: a request per branch costs a round trip each.
    """
    counters = {f"n{c}" for p, c in COLLECTIONS.items() if any(w.startswith(p) for w in wanted)}
    return sorted(names[n] for n in names if n in wanted or n in counters)


def _event_layout(rf: Any, chunk: Any, metadata: dict, cache: dict, wanted: frozenset) -> ak.Array:
    """NanoEvents of an event-based tree (knunu's :class:`Belle2Schema`).

    The ``wanted`` variables are read in one request, any other when a processor touches it.
    """
    from coffea.nanoevents import NanoEventsFactory

    from knunu.processors.schema import Belle2Schema

    source = chunk.source
    renames = source.renames()
    schema = Belle2Schema.renamed(renames) if renames else Belle2Schema
    treepath = source.file_tree(chunk.tree)
    tree = rf[treepath]
    names = _analysis_names(list(tree.keys()), source, f"{chunk.path}: tree '{tree.name}'")
    return NanoEventsFactory.from_root(
        file=rf,
        treepath=treepath,
        schemaclass=schema,
        metadata=metadata,
        mode="virtual",
        entry_start=chunk.start,
        entry_stop=chunk.stop,
        preload=_preloaded(names, wanted) or None,
        buffer_cache=cache,
    ).events()


def _candidate_layout(
    rf: Any, chunk: Any, metadata: dict, cache: dict, wanted: frozenset
) -> ak.Array:
    """NanoEvents of a candidate-based tree: rows grouped into events, read lazily.

    Event-level branches take the value of each event's first row; branches with a
    collection prefix (``K_``, ``Btag_``) become the candidate collection with its counter.
    The ``wanted`` variables are read in one request when a processor first touches one of
    them, any other when touched; each is checked for NaN and inf when first touched.
    """
    from coffea.nanoevents.methods import base

    source = chunk.source
    tree = rf[source.file_tree(chunk.tree)]
    where = f"{chunk.path}: tree '{tree.name}'"
    names = _analysis_names(list(tree.keys()), source, where)
    cand, starts = _event_starts(tree, names["__candidate__"], chunk, where)
    counts = np.diff(starts)
    prefix = _collection_prefix(names, where)
    collection = COLLECTIONS[prefix]
    rows = _Rows(tree, names, chunk, where, _preloaded(names, wanted), (cand, starts, prefix))
    container: dict[str, Callable[[], np.ndarray]] = {}
    fields: dict[str, dict] = {}
    members: dict[str, dict] = {}
    for name in names:
        if name in CANDIDATE_BRANCHES:
            continue
        branch = tree[names[name]]
        dtype = getattr(branch.interpretation, "to_dtype", None)
        if dtype is None or dtype.shape:
            raise InputError(f"{where}: branch '{branch.name}' is not one number per row")
        form = {"class": "NumpyArray", "primitive": _primitive(dtype), "form_key": name}
        if name.startswith(prefix):
            members[name[len(prefix) :]] = form
            container[f"{name}-data"] = _later(rows.read, name)
        else:
            fields[name] = form
            container[f"{name}-data"] = _later(rows.per_event, name)
    fields[f"n{collection}"] = {"class": "NumpyArray", "primitive": "int64", "form_key": "!n"}
    container["!n-data"] = lambda: counts.astype(np.int64)
    fields[collection] = {
        "class": "ListOffsetArray",
        "offsets": "i64",
        "content": {
            "class": "RecordArray",
            "fields": list(members),
            "contents": list(members.values()),
        },
        "form_key": "!offsets",
    }
    container["!offsets-offsets"] = lambda: starts - starts[0]
    form = {
        "class": "RecordArray",
        "fields": list(fields),
        "contents": list(fields.values()),
        "parameters": {"__record__": "NanoEvents", "metadata": metadata},
    }
    return ak.from_buffers(ak.forms.from_dict(form), len(counts), container, behavior=base.behavior)


def _collection_prefix(names: Mapping[str, str], where: str) -> str:
    """The one candidate collection's prefix (``K_``, ``Btag_``) of a candidate tree.

    Raises:
        InputError: none or several.
    """
    prefixes = sorted({p for p in COLLECTIONS for n in names if n.startswith(p)})
    if len(prefixes) != 1:
        raise InputError(
            f"{where}: a candidate tree needs exactly one candidate collection "
            f"({' or '.join(COLLECTIONS)} variables), found {prefixes or 'none'}"
        )
    return prefixes[0]


def _event_starts(tree: Any, branch: str, chunk: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's ``__candidate__`` values and the rows where its events start (and its end).

    The plan checked the bookkeeping (contiguous events, __candidate__ 0, 1, ... per event):
    an event starts where __candidate__ is 0. The row after the chunk is read too: the chunk
    must start and end at event boundaries and hold the events it was planned with, else the
    file changed since it was inspected.
    """
    after = min(chunk.stop + 1, tree.num_entries)
    cand = tree[branch].array(library="np", entry_start=chunk.start, entry_stop=after)
    changed = "(the file changed since it was inspected)"
    if after > chunk.stop and cand[-1] != 0:
        raise InputError(f"{where}: row {chunk.stop} continues an event that rows "
                         f"[{chunk.start}, {chunk.stop}) end before {changed}")  # fmt: skip
    cand = cand[: chunk.stop - chunk.start]
    if len(cand) and cand[0] != 0:
        raise InputError(f"{where}: row {chunk.start} does not start an event {changed}")
    starts = np.append(np.flatnonzero(cand == 0), len(cand))
    if chunk.n_events >= 0 and len(starts) - 1 != chunk.n_events:
        raise InputError(
            f"{where}: rows [{chunk.start}, {chunk.stop}) hold {len(starts) - 1} event(s),"
            f" planned {chunk.n_events} {changed}"
        )
    return cand, starts


class _Rows:
    """The rows of one chunk of a candidate tree, read when first touched and checked."""

    def __init__(
        self,
        tree: Any,
        names: dict[str, str],
        chunk: Any,
        where: str,
        together: list[str],
        events: tuple[np.ndarray, np.ndarray, str],
    ) -> None:
        self.tree, self.names, self.chunk, self.where = tree, names, chunk, where
        self.together = together
        cand, self.starts, self.prefix = events
        self.later_row = cand[1:] != 0  # row k + 1 is not its event's first
        self.span = {"entry_start": chunk.start, "entry_stop": chunk.stop}
        self.bulk: dict[str, np.ndarray] = {}  # the wanted branches, read at a first touch

    def read(self, name: str) -> np.ndarray:
        """Every row's value of variable ``name`` (finite, else :class:`InputError`)."""
        branch = self.names[name]
        if branch in self.together and not self.bulk:
            self.bulk.update(self.tree.arrays(self.together, library="np", how=dict, **self.span))
            self.together.clear()  # read once; each array leaves ``bulk`` when it is used
        if branch in self.bulk:
            values = self.bulk.pop(branch)
        else:
            values = self.tree[branch].array(library="np", **self.span)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise InputError(f"{self.where}: {bad} NaN/inf value(s) in branch '{branch}'")
        return values

    def per_event(self, name: str) -> np.ndarray:
        """Each event's value of ``name`` (the same in all its rows, else :class:`InputError`)."""
        values = self.read(name)
        differ = values[1:] != values[:-1]
        differ &= self.later_row
        if differ.any():
            row = self.chunk.start + 1 + int(np.argmax(differ))
            raise InputError(
                f"{self.where}: branch '{self.names[name]}' ({name}) differs between the rows of "
                f"one event (row {row}): a candidate variable needs an alias with the "
                f"{self.prefix} prefix"
            )
        return values[self.starts[:-1]]


def _later(read: Callable[[str], np.ndarray], name: str) -> Callable[[], np.ndarray]:
    return lambda: read(name)


def _primitive(dtype: np.dtype) -> str:
    return ak.types.numpytype.dtype_to_primitive(np.dtype(dtype).newbyteorder("="))


#: Layout name -> the reader of one chunk into NanoEvents.
LAYOUTS: dict[str, Callable[[Any, Any, dict, dict, frozenset], ak.Array]] = {
    "event": _event_layout,
    "candidate": _candidate_layout,
}


def detect(branches: set[str] | frozenset[str]) -> str:
    """The layout a tree's branch names say it has.

    >>> detect({"__event__", "__candidate__", "__ncandidates__", "p"}), detect({"nK", "K_p"})
    ('candidate', 'event')
    """
    return "candidate" if set(CANDIDATE_BRANCHES) <= set(branches) else "event"
