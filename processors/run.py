"""Running processors over a catalogue: chunks as Dask tasks, faults, event accounting.

Every file is checked first; chunks run as Dask tasks (or in this process), read errors are
retried, bad inputs fail the run with the file named or, when allowed, are listed as lost;
outputs are summed in chunk order (identical whatever the workers did); finished chunks can be
checkpointed; every run checks events in = processed + lost for every dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import numpy as np
from coffea import processor

from knunu.cluster.backends import completed, worker_death
from knunu.errors import InputError, ProcessingError, first_line
from knunu.processors.layouts import (
    LAYOUTS,
    FileLayout,
    Source,
    duplicate_events,
    file_ids,
    inspect_tree,
    mc_only,
    overlapping,
)
from knunu.progress import Progress
from knunu.rundir import adler32, atomic_path, input_file

log = logging.getLogger(__name__)

#: knunu's own files: event-based trees with the analysis names and normalised weights.
EVENT_BASED = Source()


def dataset_kind(dataset: str) -> tuple[str, bool]:
    """(sample, is_data) of a catalogue dataset name.

    The ``embedded`` dataset (signal embedded in data events) is data of its own sample; the
    nature stream (``nature_on``, ``nature_off``: weighted, data-like) is sample ``nature``.

    >>> dataset_kind("ccbar_offres"), dataset_kind("data_on"), dataset_kind("embedded")
    (('ccbar', False), ('data', True), ('embedded', True))
    >>> dataset_kind("nature_off")
    ('nature', True)
    """
    if dataset.startswith("data_"):
        return "data", True
    if dataset.startswith("nature_"):
        return "nature", True
    if dataset == "embedded":
        return "embedded", True
    return dataset.removesuffix("_offres"), False


class Catalogue(NamedTuple):
    """The simulation's (or a user's) dataset catalogue."""

    path: Path
    datasets: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> Catalogue:
        """Read ``catalogue.json``; file paths become absolute (batch jobs run elsewhere).

        Relative paths are relative to the catalogue (older catalogues: to the working
        directory, when the file is found there and not beside the catalogue).

        Raises:
            InputError: missing or malformed catalogue.
        """
        path = Path(path)
        if path.exists() or path.is_symlink():
            input_file(path)  # not a directory, FIFO or link loop
        try:
            doc = json.loads(path.read_text())
            datasets = doc["datasets"]
            for entry in datasets.values():
                for f in entry["files"]:
                    f["path"] = _absolute(f["path"], path.parent)
                    f["entries_ita"], f["entries_hta"]
        except FileNotFoundError:
            raise InputError(f"{path}: catalogue not found (run `knunu simulate` first)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a dataset catalogue ({exc!r})") from None
        return cls(path, datasets)

    def paths(self, datasets: list[str]) -> list[str]:
        """The file paths of ``datasets``, in catalogue order."""
        return [f["path"] for name in datasets for f in self.datasets[name]["files"]]

    def entries(self, tree: str, dataset: str) -> int:
        """Events the catalogue says the dataset's files hold in ``tree``."""
        return sum(int(f[f"entries_{tree}"]) for f in self.datasets[dataset]["files"])

    def source(self, dataset: str, file: Mapping[str, Any], tree: str) -> Source:
        """How a tree of one of the dataset's files is read (layout, names, weights)."""
        return Source.of(self.datasets[dataset], file, tree)


class Checksums(NamedTuple):
    """What :func:`add_checksums` did to a catalogue."""

    added: int
    verified: int
    remote: int  # files not on a local or mounted file system (left without a checksum)


def add_checksums(path: str | Path) -> Checksums:
    """Give every local file of a (user's) catalogue its Adler-32; verify the ones it has.

    The catalogue is rewritten atomically with the new checksums, which every later run
    verifies before processing; nothing else in it changes.

    Raises:
        InputError: the catalogue is malformed, a file is missing, or a file no longer has
            the checksum the catalogue records (the catalogue is then left as it was).
    """
    from knunu.rundir import write_json

    catalogue = Catalogue.load(path)  # validates and resolves the paths
    doc = json.loads(Path(path).read_text())
    added = verified = remote = 0
    for name, entry in catalogue.datasets.items():
        for raw, f in zip(doc["datasets"][name]["files"], entry["files"], strict=True):
            if "://" in f["path"]:
                remote += 1
                continue
            if raw.get("adler32"):
                verify_checksum(input_file(f["path"]), raw["adler32"])
                verified += 1
            else:
                raw["adler32"] = adler32(input_file(f["path"]))
                added += 1
    if added:
        write_json(path, doc)
    return Checksums(added, verified, remote)


def verify_checksum(path: str | Path, expected: str) -> None:
    """Raise :class:`InputError` unless the file still has the Adler-32 its catalogue records.

    LZ4 baskets carry no checksum of their own: a flipped byte inside one reads without an
    error and changes values silently.
    """
    have = adler32(path)
    if have != expected:
        raise InputError(
            f"{path}: checksum mismatch (adler32 {have}, catalogue {expected}): the file "
            "changed or is corrupted since it was written"
        )


def _absolute(name: str, base: Path) -> str:
    if "://" in name or os.path.isabs(name):  # remote (root://, https://) or absolute
        return name
    beside = base / name
    if not beside.exists() and os.path.exists(name):
        return os.path.abspath(name)
    return str(beside.resolve())


class Chunk(NamedTuple):
    """An entry range of one file: the unit of work, of retries, of checkpoints and of loss.

    In a candidate-based tree the range is in rows and starts and ends at event boundaries;
    ``n_events`` then counts its events.
    """

    index: int
    dataset: str
    path: str
    tree: str
    start: int
    stop: int
    source: Source = EVENT_BASED
    n_events: int = -1

    @property
    def events(self) -> int:
        """Events in the range."""
        return self.stop - self.start if self.n_events < 0 else self.n_events

    def describe(self) -> str:
        """``file [start, stop)``."""
        return f"{self.path} [{self.start}, {self.stop})"


class Lost(NamedTuple):
    """Events a run did not process (only with ``skip_bad_inputs``), and why."""

    dataset: str
    path: str
    start: int
    stop: int
    reason: str
    n_events: int = -1  # events in [start, stop) when the range is in rows (candidate layout)

    @property
    def events(self) -> int:
        """Events lost."""
        return self.stop - self.start if self.n_events < 0 else self.n_events


class RunOptions(NamedTuple):
    """How a run treats failures and interruptions.

    Attributes:
        retries: Extra attempts of a chunk after an ``OSError`` (transient read errors), with
            ``retry_wait * 2**k`` seconds between them; still failing -> a bad input.
        retry_wait: First wait between attempts, seconds.
        skip_bad_inputs: Bad inputs (unreadable, truncated or empty files, a missing tree or
            branch, NaN/inf values, wrong entry counts) fail the run unless this is set; then
            their events are listed in :attr:`RunReport.lost` and the run goes on.
        checkpoint_dir: Where finished chunks are kept; a run restarted with the same directory,
            processor, inputs and ``fingerprint`` loads them instead of processing them again.
        fingerprint: Extra identity of the run's inputs for the checkpoints (e.g. model digests).
        no_workers_timeout: Seconds without any worker (batch jobs at their walltime, none
            coming back) after which the run stops; finished chunks stay checkpointed.
        progress: Called with a :class:`Progress` after every finished chunk.
    """

    retries: int = 3
    retry_wait: float = 0.5
    skip_bad_inputs: bool = False
    checkpoint_dir: str | Path | None = None
    fingerprint: str = ""
    no_workers_timeout: float = 600.0
    progress: Callable[[Progress], None] | None = None


class RunReport(NamedTuple):
    """What one processor run did: every input event is processed or listed in ``lost``."""

    processor: str
    events_in: dict[str, int]
    events_processed: dict[str, int]
    lost: list[Lost]
    chunks: int
    chunks_from_checkpoint: int
    retries: int
    wall_seconds: float
    process_seconds: float

    @property
    def throughput_hz(self) -> float:
        """Events processed per wall-clock second."""
        return sum(self.events_processed.values()) / max(self.wall_seconds, 1e-9)

    @property
    def events_lost(self) -> dict[str, int]:
        """Lost events per dataset."""
        out = dict.fromkeys(self.events_in, 0)
        for item in self.lost:
            out[item.dataset] += item.events
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        doc = self._asdict()
        doc["lost"] = [{**item._asdict(), "events": item.events} for item in self.lost]
        return {**doc, "events_lost": self.events_lost, "throughput_hz": self.throughput_hz}


class ChunkResult(NamedTuple):
    """What a chunk task returns: the processor output, or the bad-input reason."""

    chunk: Chunk
    output: dict[str, Any] | None
    problem: str | None
    attempts: int
    seconds: float


def run(
    catalogue: Catalogue,
    datasets: list[str],
    proc: processor.ProcessorABC,
    tree: str,
    client: Any | None = None,
    chunksize: int = 200_000,
    options: RunOptions | None = None,
) -> tuple[dict[str, Any], RunReport]:
    """Run ``proc`` over the ``tree`` of ``datasets`` and account for every event.

    Files are checked first (readable, complete, the tree there with the catalogue's entries and
    the dataset's branches), then cut into chunks of ``chunksize`` entries that run as Dask tasks
    (``client``) or here (``None``). Outputs are summed on the client in chunk order, so the
    result does not depend on the number of workers, on which worker finished first, or on
    workers lost in the middle (Dask re-runs their tasks). coffea's own executors are not used:
    with ``skipbadfiles`` its DaskExecutor drops a chunk on a transient ``OSError`` silently.

    Args:
        catalogue: The dataset catalogue (files and their entries).
        datasets: Datasets to run over.
        proc: The processor; per chunk its output must hold ``{dataset: {"events": n, ...}}``.
        tree: The tree name.
        client: A ``distributed.Client``; ``None`` runs in this process.
        chunksize: Events per chunk (a candidate-based chunk holds all their rows).
        options: Retries, skipping, checkpoints, progress (defaults: :class:`RunOptions`).

    Raises:
        InputError: a bad input (file and problem named), unless ``options.skip_bad_inputs``.
        ProcessingError: the processor failed on a chunk (chunk named), or the events it counted
            differ from the inputs'.
    """
    options = options or RunOptions()
    name = type(proc).__name__
    start_time = time.perf_counter()
    needs = frozenset(getattr(proc, "names", ()))
    chunks, lost = _plan(catalogue, datasets, tree, chunksize, options, client, (name, needs))
    store = _Checkpoints(options, proc, tree, chunks)
    tally = _Tally((name, tree), chunks, options, store, lost, start_time)
    todo = _resume(chunks, store, tally)
    from_checkpoint = len(chunks) - len(todo)
    args = (proc, options.retries, options.retry_wait)
    if client is None:
        for chunk in todo:
            tally.finish(_guarded(chunk, *args))
    else:
        _run_dask(client, todo, args, tally.finish, name, store.key, options.no_workers_timeout)
    output = tally.merger.result()
    events_in = {ds: catalogue.entries(tree, ds) for ds in datasets}
    processed = {ds: int(output.get(ds, {}).get("events", 0)) for ds in datasets}
    lost.sort(key=lambda x: (x.dataset, x.path, x.start))
    report = RunReport(name, events_in, processed, lost, len(chunks), from_checkpoint,
                       tally.retries, time.perf_counter() - start_time, tally.seconds)  # fmt: skip
    _account(report)
    return output, report


def _resume(chunks: list[Chunk], store: _Checkpoints, tally: _Tally) -> list[Chunk]:
    """The chunks still to run; those checkpointed by an earlier run go to ``tally``."""
    todo = []
    for chunk in chunks:
        saved = store.load(chunk)
        if saved is None:
            todo.append(chunk)
        else:
            tally.finish(saved, from_checkpoint=True)
    if len(todo) < len(chunks):
        done = len(chunks) - len(todo)
        log.info("%s: %d of %d chunks from checkpoints", tally.name, done, len(chunks))
    return todo


class _Tally:
    """Finished chunks into the ordered merge (or the lost list) and the progress line."""

    def __init__(
        self,
        what: tuple[str, str],
        chunks: list[Chunk],
        options: RunOptions,
        store: _Checkpoints,
        lost: list[Lost],
        start_time: float,
    ) -> None:
        self.name, self.tree = what
        self.chunks, self.options, self.store, self.lost = chunks, options, store, lost
        self.merger = _OrderedMerge(len(chunks))
        self.total_events = sum(c.events for c in chunks)
        self.start_time = start_time
        self.done = self.events = self.retries = 0
        self.seconds = 0.0

    def finish(self, result: ChunkResult, from_checkpoint: bool = False) -> None:
        """One chunk's result: merged, checkpointed, or lost (else a bad input raises)."""
        chunk = result.chunk
        if result.problem is not None:
            if not self.options.skip_bad_inputs:
                unit = "entries" if chunk.n_events < 0 else "rows"
                where = f"{self.name}, {unit} {chunk.start}-{chunk.stop}"
                raise InputError(f"{result.problem} ({where})")
            log.warning("lost %d events: %s", chunk.events, result.problem)
            self.lost.append(
                Lost(
                    chunk.dataset,
                    chunk.path,
                    chunk.start,
                    chunk.stop,
                    result.problem,
                    chunk.n_events,
                )
            )
            self.merger.add(chunk.index, None)
        else:
            if not from_checkpoint:
                self.store.save(result)
            self.merger.add(chunk.index, result.output)
        self.done += 1
        self.events += chunk.events
        self.retries += result.attempts - 1
        self.seconds += result.seconds
        if self.options.progress is not None:
            elapsed = time.perf_counter() - self.start_time
            self.options.progress(
                Progress(
                    f"{self.name} ({self.tree})",
                    self.done,
                    len(self.chunks),
                    self.events,
                    self.total_events,
                    elapsed,
                )
            )


def _account(report: RunReport) -> None:
    """Every input event processed or lost, else :class:`ProcessingError`; the summary line."""
    lost_events = report.events_lost
    processed = report.events_processed
    for ds, n_in in report.events_in.items():
        if processed[ds] + lost_events[ds] != n_in:
            raise ProcessingError(
                f"{report.processor}: dataset {ds}: {processed[ds]} events processed + "
                f"{lost_events[ds]} lost != {n_in} in its files"
            )
    log.info(
        "%s: %d events in %d chunks (%d from checkpoints, %d retries, %d lost), %.1f s (%.0f Hz)",
        report.processor,
        sum(processed.values()),
        report.chunks,
        report.chunks_from_checkpoint,
        report.retries,
        sum(lost_events.values()),
        report.wall_seconds,
        report.throughput_hz,
    )


def _run_dask(
    client: Any,
    todo: list[Chunk],
    args: tuple[Any, ...],
    finish: Callable[[ChunkResult], None],
    name: str,
    prefix: str,
    no_workers_timeout: float = 600.0,
) -> None:
    """Chunks as Dask tasks; results handed to ``finish`` as they arrive (any order).

    A chunk whose workers keep dying (a memory limit, a crash) stops the run with one line
    naming it and the workers' memory limit; so does a cluster left without workers for
    ``no_workers_timeout`` seconds. Chunks finished until then are kept by ``finish``.
    """
    keys = [f"knunu-{prefix[:12]}-{c.index}" for c in todo]
    futures = client.map(_guarded, todo, *[[a] * len(todo) for a in args], key=keys)
    watched = completed(client, futures, name, "chunks", no_workers_timeout, _no_workers)
    with closing(watched) as results:
        for k, result, limit in results:
            if isinstance(result, BaseException):  # the processor failed, or workers kept dying
                why = worker_death(result, limit) or first_line(result)
                chunk = todo[k].describe()
                raise ProcessingError(f"{name}: chunk {chunk} failed: {why}") from result
            finish(result)


def _no_workers(message: str) -> ProcessingError:
    return ProcessingError(f"{message}; finished chunks are checkpointed: run again to resume")


def _guarded(chunk: Chunk, proc: Any, retries: int, wait: float) -> ChunkResult:
    """Process one chunk; ``OSError`` is retried, bad input is returned, anything else raised."""
    result, problem, attempts = _attempt(chunk.path, _process, (chunk, proc), retries, wait)
    output, seconds = result or (None, 0.0)
    return ChunkResult(chunk, output, problem, attempts, seconds)


def _attempt(
    path: str, work: Callable[..., Any], args: tuple[Any, ...], retries: int, wait: float
) -> tuple[Any, str | None, int]:
    """``work(*args)``: (its value, the bad-input problem or ``None``, attempts made).

    An :class:`InputError` is a bad input at once; an ``OSError`` is retried ``retries`` times
    (waits ``wait * 2**k``) and then is one too; anything else (a processor bug) propagates.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return work(*args), None, attempt
        except InputError as exc:
            return None, str(exc), attempt
        except OSError as exc:
            if attempt > retries:
                what = (
                    "file not found"
                    if isinstance(exc, FileNotFoundError)
                    else f"unreadable ({first_line(exc)})"
                )
                return None, f"{path}: {what} after {attempt} attempts", attempt
            log.warning("%s: %s; retrying", path, first_line(exc))
            time.sleep(wait * 2 ** (attempt - 1))


def _process(chunk: Chunk, proc: Any) -> tuple[dict[str, Any], float]:
    """Read one chunk as NanoEvents, run the processor, check the values it read are finite.

    Returns:
        The processor's output and the seconds ``process`` took.

    Raises:
        InputError: a bad input, among them a basket that does not decompress or
            deserialise (a corrupt file without a catalogue checksum to catch it before).
    """
    try:
        return _read_and_process(chunk, proc)
    except (InputError, OSError):
        raise
    except Exception as exc:
        if not _from_the_reader(exc):
            raise  # a processor's bug: not the input's fault
        log.warning("%s: corrupt data", chunk.path, exc_info=exc)  # where uproot stopped
        raise InputError(f"{chunk.path}: corrupt data ({first_line(exc)})") from None


#: Where uproot turns a file's bytes into arrays: an error raised there is the bytes' fault.
_READER_CODE = tuple(
    f"{os.sep}uproot{os.sep}{part}"
    for part in ("compression.py", "deserialization.py", f"models{os.sep}TBasket.py",
                 f"interpretation{os.sep}", f"source{os.sep}")
)  # fmt: skip
#: Never the input's fault, wherever raised: the machine, the environment, a bug.
_NOT_THE_INPUT = (MemoryError, ImportError, AttributeError, TypeError, RecursionError)


def _from_the_reader(exc: BaseException) -> bool:
    """Whether ``exc`` says a file's bytes do not decompress or deserialise.

    Decompression errors (zlib, lzma, cramjam) and uproot's ``DeserializationError`` always
    do; a ``ValueError`` (an LZ4 checksum, a bad array size), ``IndexError`` or
    ``struct.error`` only when raised in uproot's decompression, deserialisation, basket,
    interpretation or source code. A processor's own errors, and memory, import or type
    errors anywhere, never do.
    """
    import lzma
    import struct
    import zlib

    from uproot.deserialization import DeserializationError

    if isinstance(exc, _NOT_THE_INPUT):
        return False
    if isinstance(exc, zlib.error | lzma.LZMAError | DeserializationError):
        return True
    if type(exc).__name__ == "DecompressionError":  # cramjam's
        return True
    if not isinstance(exc, ValueError | IndexError | struct.error):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in _READER_CODE)


def _read_and_process(chunk: Chunk, proc: Any) -> tuple[dict[str, Any], float]:
    import uproot

    with uproot.open(chunk.path) as rf:
        _check_file(rf, chunk.path, chunk.source.file_tree(chunk.tree), chunk.stop)
        cache: dict[str, Any] = {}
        metadata = {
            "dataset": chunk.dataset,
            "filename": chunk.path,
            "treename": chunk.tree,
            "entrystart": chunk.start,
            "entrystop": chunk.stop,
            "fileuuid": str(rf.file.uuid),
        }
        wanted = frozenset((*getattr(proc, "names", ()), *getattr(proc, "optional", ())))
        events = LAYOUTS[chunk.source.layout](rf, chunk, metadata, cache, wanted)
        tic = time.perf_counter()
        try:
            output = proc.process(events)
        except AttributeError as exc:  # awkward: "no field named 'x'" -> the branch is missing
            if "no field named" in str(exc):
                raise InputError(f"{chunk.path}: missing branch ({first_line(exc)})") from None
            raise
        seconds = time.perf_counter() - tic
        _check_finite(cache, chunk)
    return output, seconds


def _check_file(rf: Any, path: str, tree: str, entries: int | None = None) -> int:
    """Raise :class:`InputError` unless ``rf`` is complete and holds ``tree``; its entries."""
    import uproot

    if os.path.exists(path):  # local (or mounted) file: truncated when shorter than fEND
        size = os.path.getsize(path)
        if size < rf.file.fEND:
            raise InputError(f"{path}: truncated file ({size} of {rf.file.fEND} bytes)")
    try:
        n = rf[tree].num_entries
    except uproot.KeyInFileError:
        has = ", ".join(rf.keys(cycle=False)) or "nothing"
        raise InputError(f"{path}: no tree '{tree}' (the file has: {has})") from None
    if entries is not None and n < entries:
        raise InputError(f"{path}: {n} entries in '{tree}', expected at least {entries}")
    return n


def _check_finite(cache: Mapping[str, Any], chunk: Chunk) -> None:
    """Raise :class:`InputError` naming the first branch read with a NaN or infinite value."""
    for key, buffer in cache.items():
        if "/data/" not in key or getattr(buffer, "dtype", None) is None:
            continue
        if buffer.dtype.kind == "f" and not np.isfinite(buffer).all():
            branch = unquote(key.split("/data/", 1)[1]).split(",")[0]
            bad = int((~np.isfinite(buffer)).sum())
            raise InputError(f"{chunk.path}: {bad} NaN/inf value(s) in branch '{branch}'")


def _plan(
    catalogue: Catalogue,
    datasets: list[str],
    tree: str,
    chunksize: int,
    options: RunOptions,
    client: Any | None = None,
    reader: tuple[str, frozenset[str]] = ("", frozenset()),
) -> tuple[list[Chunk], list[Lost]]:
    """Check every file (with retries), cut the good ones into chunks; bad ones lost or raised.

    ``reader`` is (processor name, the variables it reads): a dataset without one of them
    (MC truth excepted in data) stops the run here, naming a file and its tree.

    The files are inspected on the cluster's workers when there is a ``client`` (reading a
    file's tree metadata costs about 10 ms locally, more on remote storage: thousands of files
    must not queue on the client), here otherwise.
    """
    _check_listing(catalogue, datasets, chunksize)
    jobs = [
        (ds, (f["path"], tree, int(f[f"entries_{tree}"]), f.get("adler32") or None, src))
        for ds in datasets
        for f in catalogue.datasets[ds]["files"]
        for src in [catalogue.source(ds, f, tree)]
    ]
    todo = [(*args, options.retries, options.retry_wait) for _, args in jobs]
    found = _inspect_all(todo, tree, client, options.no_workers_timeout)
    layouts: dict[str, dict[str, FileLayout]] = {ds: {} for ds in datasets}
    problems: dict[str, dict[str, str]] = {ds: {} for ds in datasets}
    for (ds, (path, *_)), (layout, problem) in zip(jobs, found, strict=True):
        if problem:
            problems[ds][path] = problem
        else:
            layouts[ds][path] = layout
    chunks: list[Chunk] = []
    lost: list[Lost] = []
    for ds in datasets:
        seen, bad = layouts[ds], problems[ds]
        union = set().union(*(x.names for x in seen.values()))
        _has_what_is_read(catalogue, ds, tree, union, seen, reader)
        for path, layout in seen.items():
            if missing := sorted(union - layout.names):
                bad[path] = f"{path}: missing branch(es) {', '.join(missing)} of dataset {ds}"
        _no_event_twice(catalogue, ds, tree, {p: x for p, x in seen.items() if p not in bad})
        for f in catalogue.datasets[ds]["files"]:
            path, want = f["path"], int(f[f"entries_{tree}"])
            if path in bad:
                if not options.skip_bad_inputs:
                    raise InputError(bad[path])
                log.warning("lost %d events: %s", want, bad[path])
                lost.append(Lost(ds, path, 0, want, bad[path]))
                continue
            source = catalogue.source(ds, f, tree)
            chunks += _chunks_of(
                ds, path, tree, source, (want, chunksize, seen[path].starts), len(chunks)
            )
    return chunks, lost


def _check_listing(catalogue: Catalogue, datasets: list[str], chunksize: int) -> None:
    """Before any file is opened: a positive chunk size, each dataset there, no file twice.

    Raises:
        InputError: naming the chunk size, the dataset or the file listed twice.
    """
    if chunksize < 1:
        raise InputError(f"chunksize must be positive, got {chunksize}")
    for ds in datasets:
        if ds not in catalogue.datasets:
            raise InputError(f"{catalogue.path}: dataset '{ds}' is not in the catalogue")
        counts = Counter(catalogue.paths([ds]))
        if twice := next((p for p, n in counts.items() if n > 1), None):
            raise InputError(f"{twice}: listed twice in dataset {ds} ({catalogue.path})")


def _inspect_all(
    todo: list[tuple[Any, ...]], tree: str, client: Any | None, timeout: float
) -> list[Any]:
    """Every file's (layout, problem), inspected on the cluster's workers or here."""
    if client is None or not todo:
        return [_inspected(*args) for args in todo]
    futures = client.map(_inspected, *zip(*todo, strict=True), pure=False)
    found: list[Any] = [None] * len(todo)
    watched = completed(client, futures, tree, "file inspections", timeout, _no_workers)
    with closing(watched) as results:
        for k, result, _ in results:
            if isinstance(result, BaseException):
                raise result
            found[k] = result
    return found


def _chunks_of(
    ds: str,
    path: str,
    tree: str,
    source: Source,
    cut: tuple[int, int, np.ndarray | None],
    first_index: int,
) -> list[Chunk]:
    """One file's chunks (``cut``: its events, the chunk size, its event starts if by rows)."""
    want, chunksize, starts = cut
    chunks = []
    for first in range(0, want, chunksize):
        last = min(first + chunksize, want)
        index = first_index + len(chunks)
        if starts is None:  # event-based: a row is an event
            chunks.append(Chunk(index, ds, path, tree, first, last, source))
        else:  # candidate-based: rows of whole events
            rows = int(starts[first]), int(starts[last])
            chunks.append(Chunk(index, ds, path, tree, *rows, source, last - first))
    return chunks


def _has_what_is_read(
    catalogue: Catalogue,
    ds: str,
    tree: str,
    have: set[str],
    seen: Mapping[str, FileLayout],
    reader: tuple[str, frozenset[str]],
) -> None:
    """Raise unless the dataset's files give every variable the processor reads."""
    name, needs = reader
    is_data = dataset_kind(ds)[1]
    if not seen or not (missing := sorted(n for n in needs - have if not (is_data and mc_only(n)))):
        return
    path = next(iter(seen))
    file = next(f for f in catalogue.datasets[ds]["files"] if f["path"] == path)
    where = f"{path}: tree '{catalogue.source(ds, file, tree).file_tree(tree)}'"
    raise InputError(
        f"{where}: no {', '.join(missing)} (read by {name}; dataset {ds}): "
        "alias the file's names in the catalogue"
    )


def _no_event_twice(
    catalogue: Catalogue, ds: str, tree: str, layouts: Mapping[str, FileLayout]
) -> None:
    """Raise when two files of a dataset hold the same event.

    Files whose event-number ranges of a run overlap are compared event by event (read again
    here); knunu's own files never overlap (a run per file), so they cost nothing more. A
    dataset with ``unique_events: false`` (private MC whose jobs all number their events from 1
    in the same run) is not checked. Not skipped with ``skip_bad_inputs``: which file is the
    bad one is not known.
    """
    if not catalogue.datasets[ds].get("unique_events", True):
        return
    suspects = overlapping({p: x.ranges for p, x in layouts.items()})
    if not suspects:
        return
    files = {f["path"]: f for f in catalogue.datasets[ds]["files"]}
    ids = {}
    for path in suspects:
        source = catalogue.source(ds, files[path], tree)
        try:
            ids[path] = file_ids(path, tree, source)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: cannot read its event numbers ({first_line(exc)})") from None
    if twice := duplicate_events(ids):
        first, second, event = twice
        name = catalogue.source(ds, files[second], tree).file_tree(tree)
        raise InputError(
            f"{second}: tree '{name}': event {event} is also in {first} (dataset {ds}: a file "
            "copied under another name? MC numbering its events alike in every job: "
            "unique_events: false)"
        )


def _inspected(
    path: str,
    tree: str,
    want: int,
    checksum: str | None,
    source: Source,
    retries: int,
    wait: float,
) -> tuple[FileLayout | None, str | None]:
    """A file's layout, or the problem that makes it a bad input (retried)."""
    args = (path, tree, want, checksum, source)
    layout, problem, _ = _attempt(path, _inspect, args, retries, wait)
    return layout, problem


def _inspect(
    path: str, tree: str, want: int, checksum: str | None = None, source: Source = EVENT_BASED
) -> FileLayout:
    """Raise :class:`InputError` for a bad input file; a good one's layout.

    With a ``checksum`` (the catalogue's Adler-32 of the file as written), the file's bytes
    must still have it (:func:`verify_checksum`).
    """
    import uproot

    if os.path.exists(path) and os.path.getsize(path) == 0:
        raise InputError(f"{path}: empty file")
    name = source.file_tree(tree)
    try:
        with uproot.open(path) as rf:
            _check_file(rf, path, name)
            layout = inspect_tree(rf[name], path, source)
    except (InputError, OSError):  # OSError: maybe transient, retried by the caller
        raise
    except Exception as exc:  # not ROOT, corrupt header
        raise InputError(f"{path}: cannot read tree '{name}' ({first_line(exc)})") from None
    if layout.events != want:
        what = "entries" if layout.starts is None else "events"
        raise InputError(f"{path}: {layout.events} {what} in '{name}', catalogue says {want}")
    if checksum is not None and os.path.exists(path):
        verify_checksum(path, checksum)
    return layout


class _OrderedMerge:
    """Sum chunk outputs strictly in chunk order, holding only the ones that arrive early."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.next = 0
        self.waiting: dict[int, dict[str, Any] | None] = {}
        self.total: dict[str, Any] | None = None

    def add(self, index: int, output: dict[str, Any] | None) -> None:
        self.waiting[index] = output
        while self.next in self.waiting:
            out = self.waiting.pop(self.next)
            if out is not None:
                self.total = out if self.total is None else processor.accumulate([out], self.total)
            self.next += 1

    def result(self) -> dict[str, Any]:
        if self.next != self.n:
            raise ProcessingError(f"{self.n - self.next} chunk(s) never finished")
        return self.total or {}


#: Bumped when what a chunk output holds changes type (2: reuse sums are EntrySums, not hists),
#: so a run resumed across the change recomputes its chunks instead of merging unlike outputs.
CHECKPOINT_FORMAT = 3


class _Checkpoints:
    """Finished chunk outputs on disk, keyed by processor, inputs and chunking."""

    def __init__(self, options: RunOptions, proc: Any, tree: str, chunks: list[Chunk]) -> None:
        import cloudpickle

        digest = hashlib.sha256(cloudpickle.dumps(proc))
        digest.update(f"{tree}|{options.fingerprint}|{CHECKPOINT_FORMAT}".encode())
        for c in chunks:
            stat = os.stat(c.path) if os.path.exists(c.path) else None
            ident = (c.dataset, c.path, c.start, c.stop, stat and (stat.st_size, stat.st_mtime_ns))
            digest.update(repr(ident).encode())
        self.key = digest.hexdigest()
        self.dir = None
        if options.checkpoint_dir is not None:
            self.dir = Path(options.checkpoint_dir) / f"{type(proc).__name__}-{self.key[:16]}"
            self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, chunk: Chunk) -> Path:
        assert self.dir is not None
        return self.dir / f"{chunk.index:06d}.pkl"

    def load(self, chunk: Chunk) -> ChunkResult | None:
        if self.dir is None or not self._path(chunk).exists():
            return None
        try:
            saved = pickle.loads(self._path(chunk).read_bytes())
        except Exception:  # a damaged checkpoint is recomputed
            log.warning("ignoring unreadable checkpoint %s", self._path(chunk))
            return None
        return saved if isinstance(saved, ChunkResult) and saved.chunk == chunk else None

    def save(self, result: ChunkResult) -> None:
        if self.dir is None:
            return
        with atomic_path(self._path(result.chunk)) as tmp:
            tmp.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
