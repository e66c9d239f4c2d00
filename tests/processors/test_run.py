"""The processor runner under faults: killed workers, transient read errors, bad inputs,
interrupted runs. Every check compares histograms bit for bit with an undisturbed run."""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import awkward as ak
import dask.config
import numpy as np
import pytest
import uproot
from coffea import processor

from knunu.cluster import get_client
from knunu.errors import InputError, ProcessingError
from knunu.processors import run as runner
from knunu.processors.ita import ITAProcessor
from knunu.rundir import adler32
from knunu.simulation.ntuple import Tree, write_ntuple

DATASETS = ["signal", "charged"]


def assert_identical(a: dict, b: dict) -> None:
    """Same datasets, same histograms (values and variances bit-identical), same counters."""
    assert a.keys() == b.keys()
    for ds in a:
        assert a[ds].keys() == b[ds].keys(), ds
        for key, x in a[ds].items():
            y = b[ds][key]
            if hasattr(x, "values") and hasattr(x, "axes"):
                assert x.axes == y.axes, (ds, key)
                np.testing.assert_array_equal(x.values(flow=True), y.values(flow=True))
                np.testing.assert_array_equal(x.variances(flow=True), y.variances(flow=True))
            else:
                assert x == y, (ds, key)


@pytest.fixture(scope="module")
def proc(trained, cfg):
    return ITAProcessor(str(trained[0] / "models"), cfg["ita"])


@pytest.fixture(scope="module")
def reference(production, proc):
    """The undisturbed in-process run (chunks of 1000)."""
    return runner.run(production, DATASETS, proc, "ita", None, 1000)


@pytest.mark.slow
def test_a_killed_local_worker_changes_nothing(production, proc, reference):
    killed = []

    with get_client("local", n_workers=2) as client:
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)

        def kill_one(progress: runner.Progress) -> None:
            if progress.chunks_done == 2 and not killed:
                address, pid = sorted(pids.items())[0]
                os.kill(pid, signal.SIGKILL)  # the worker process, mid-run
                killed.append(address)

        options = runner.RunOptions(progress=kill_one)
        out, report = runner.run(production, DATASETS, proc, "ita", client, 1000, options)
        assert killed
        assert killed[0] not in client.scheduler_info()["workers"]
    assert report.chunks > 4
    assert report.lost == []
    assert_identical(out, reference[0])


@pytest.mark.slow
def test_worker_count_and_completion_order_do_not_matter(production, proc, reference):
    with get_client("local", n_workers=2) as client:
        out, report = runner.run(production, DATASETS, proc, "ita", client, 1000)
    assert report.events_processed == reference[1].events_processed
    assert_identical(out, reference[0])


def test_a_transient_read_error_is_retried(production, proc, reference, tmp_path):
    # the second file disappears after the first chunk and comes back once the runner has
    # failed to read it (a file server restart: back before the first retry, 0.2 s later); its
    # chunks are retried and the run ends as if nothing happened. Returning on the runner's
    # retry warning, not after a fixed time, makes the failure certain on a slow machine too.
    victim = Path(production.datasets["charged"]["files"][0]["path"])
    hidden = tmp_path / "hidden.root"
    returned = []

    def blip(progress: runner.Progress) -> None:
        if progress.chunks_done == 1:
            os.rename(victim, hidden)

    class BackOnRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage() and hidden.exists():
                os.rename(hidden, victim)
                returned.append(record.getMessage())

    handler = BackOnRetry(level=logging.WARNING)
    logging.getLogger(runner.__name__).addHandler(handler)
    options = runner.RunOptions(retries=4, retry_wait=0.2, progress=blip)
    try:
        out, report = runner.run(production, DATASETS, proc, "ita", None, 1000, options)
    finally:
        logging.getLogger(runner.__name__).removeHandler(handler)
        if hidden.exists():
            os.rename(hidden, victim)
    assert len(returned) == 1
    assert str(victim) in returned[0]
    assert report.retries >= 1
    assert report.lost == []
    assert_identical(out, reference[0])


def test_a_lasting_read_error_fails_after_the_retries(production, proc, tmp_path):
    gone = runner.Catalogue(production.path, copy.deepcopy(production.datasets))
    gone.datasets["signal"]["files"][0]["path"] = str(tmp_path / "gone.root")
    options = runner.RunOptions(retries=2, retry_wait=0.01)
    with pytest.raises(InputError, match=r"gone\.root: file not found after 3 attempts"):
        runner.run(gone, ["signal"], proc, "ita", None, 1000, options)


# --- permanently bad inputs -------------------------------------------------------------------


def _rewrite(src: str, dst: Path, tree: str = "ita", drop: str = "", poison: str = "") -> None:
    """Copy the ``ita`` tree of ``src`` to ``dst`` (as ``tree``), dropping or poisoning a branch."""
    arrays = uproot.open(src)["ita"].arrays()
    columns, candidates = {}, {}
    for name in arrays.fields:
        if name == drop or name == "nK":
            continue
        values = arrays[name]
        if name.startswith("K_"):
            candidates[name] = ak.to_numpy(ak.flatten(values))
        else:
            columns[name] = ak.to_numpy(values).copy()
    columns["__run__"] = columns["__run__"] + 1  # other events than the source's
    if poison:
        columns[poison][[5, 1500]] = [np.nan, np.inf]
    offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(arrays["nK"]))])
    write_ntuple(dst, {tree: Tree(columns, {"K_": (offsets, candidates)})}, seed=1)


def _truncate(src: str, dst: Path) -> None:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: len(data) // 2])


BAD = {
    "truncated": (_truncate, r"truncated file \(\d+ of \d+ bytes\)"),
    "empty": (lambda src, dst: dst.write_bytes(b""), r"empty file"),
    "wrong tree": (lambda src, dst: _rewrite(src, dst, tree="ita_v2"), r"no tree 'ita'"),
    "missing branch": (lambda src, dst: _rewrite(src, dst, drop="E_tot"), r"missing branch.*E_tot"),
    "NaN/inf": (
        lambda src, dst: _rewrite(src, dst, poison="E_tot"),
        r"1 NaN/inf value\(s\) in branch 'E_tot'",
    ),
}


def _with_bad_file(production, kind: str, tmp_path: Path) -> tuple[runner.Catalogue, str]:
    """The signal dataset plus a bad copy of its first file."""
    good = production.datasets["signal"]["files"][0]
    bad = tmp_path / f"{kind.replace('/', '_').replace(' ', '_')}.root"
    BAD[kind][0](good["path"], bad)
    datasets = {"signal": copy.deepcopy(production.datasets["signal"])}
    # a file made by hand: the catalogue has no checksum for it
    datasets["signal"]["files"].append({**good, "path": str(bad), "adler32": ""})
    return runner.Catalogue(production.path, datasets), str(bad)


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_input_fails_the_run_with_file_and_problem(production, proc, tmp_path, kind):
    catalogue, bad = _with_bad_file(production, kind, tmp_path)
    options = runner.RunOptions(retries=1, retry_wait=0.01)
    with pytest.raises(InputError, match=rf"^{bad}: {BAD[kind][1]}"):
        runner.run(catalogue, ["signal"], proc, "ita", None, 1000, options)


@pytest.mark.parametrize("kind", list(BAD))
def test_skipping_bad_inputs_lists_exactly_what_was_lost(production, proc, tmp_path, kind):
    catalogue, bad = _with_bad_file(production, kind, tmp_path)
    options = runner.RunOptions(retries=1, retry_wait=0.01, skip_bad_inputs=True)
    out, report = runner.run(catalogue, ["signal"], proc, "ita", None, 1000, options)
    entries = production.entries("ita", "signal")
    assert report.events_in == {"signal": 2 * entries}
    assert {x.path for x in report.lost} == {bad}
    if kind == "NaN/inf":  # only the chunks holding entries 5 and 1500 are lost
        assert [(x.start, x.stop) for x in report.lost] == [(0, 1000), (1000, 2000)]
    else:  # the whole file
        assert [(x.start, x.stop) for x in report.lost] == [(0, entries)]
    lost = sum(x.events for x in report.lost)
    assert report.events_processed["signal"] + lost == 2 * entries
    assert report.as_dict()["events_lost"] == {"signal": lost}
    if kind != "NaN/inf":  # what survived is exactly the good file's run
        good, _ = runner.run(production, ["signal"], proc, "ita", None, 1000)
        assert_identical(out, good)


def test_every_simulated_file_carries_its_checksum(production):
    files = [f for entry in production.datasets.values() for f in entry["files"]]
    assert files
    for f in files:
        assert f["adler32"] == adler32(f["path"])


def test_flipped_bytes_anywhere_in_a_file_end_in_one_line_naming_it(production, proc, tmp_path):
    # LZ4 baskets have no checksum: a flipped byte inside one reads without an error and
    # changes values; the catalogue's checksum catches every case, run or skipped
    good = production.datasets["signal"]["files"][0]
    data = Path(good["path"]).read_bytes()
    rng = np.random.default_rng(2024)
    offsets = rng.integers(0, len(data), size=40)
    entries = int(good["entries_ita"])
    for k, offset in enumerate(offsets):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << int(rng.integers(0, 8))
        bad = tmp_path / f"flip_{k}.root"
        bad.write_bytes(bytes(flipped))
        catalogue = runner.Catalogue(
            production.path, {"signal": {"files": [{**good, "path": str(bad)}]}}
        )
        options = runner.RunOptions(retries=0)
        with pytest.raises(InputError) as err:
            runner.run(catalogue, ["signal"], proc, "ita", None, 1000, options)
        message = str(err.value)
        assert message.startswith(f"{bad}: "), (offset, message)
        assert "\n" not in message, (offset, message)
        skip = runner.RunOptions(retries=0, skip_bad_inputs=True)
        _, report = runner.run(catalogue, ["signal"], proc, "ita", None, 1000, skip)
        assert [(x.path, x.events) for x in report.lost] == [(str(bad), entries)]
        assert report.events_processed.get("signal", 0) == 0
        bad.unlink()


def test_flipped_bytes_without_a_checksum_are_a_bad_input_or_read_unnoticed(
    production, proc, tmp_path
):
    # Without the catalogue's checksum (a root:// file, a catalogue written by hand), a byte
    # flipped where uproot decompresses or deserialises is a bad input naming the file, like
    # any other, never a traceback; one inside an uncompressed basket changes values unnoticed
    # (what the checksum is for). 40 seeded flips over the file, every outcome counted.
    good = production.datasets["signal"]["files"][0]
    data = Path(good["path"]).read_bytes()
    rng = np.random.default_rng(2025)
    outcomes, messages = {"bad input": 0, "read": 0}, []
    for k, offset in enumerate(rng.integers(0, len(data), size=40)):
        flipped = bytearray(data)
        flipped[offset] ^= 1 << int(rng.integers(0, 8))
        bad = tmp_path / f"flip_{k}.root"
        bad.write_bytes(bytes(flipped))
        entry = {**good, "path": str(bad), "adler32": None}
        catalogue = runner.Catalogue(production.path, {"signal": {"files": [entry]}})
        try:
            runner.run(catalogue, ["signal"], proc, "ita", None, 1000, runner.RunOptions(retries=0))
            outcomes["read"] += 1
        except InputError as err:
            outcomes["bad input"] += 1
            messages.append((str(bad), str(err)))
        bad.unlink()
    for path, message in messages:  # one line naming the file
        assert message.startswith(f"{path}: "), message
        assert "\n" not in message, message
    # measured: 4 bad inputs (a basket's LZ4 checksum or a structure uproot cannot read),
    # 36 unnoticed (LZ4 keeps incompressible baskets raw): the checksum is what catches those
    assert outcomes["bad input"] >= 2, (outcomes, messages)
    assert any("corrupt data" in m for _, m in messages), messages


class _Buggy(processor.ProcessorABC):
    """Raises a given error from its own code, as a processor with a bug does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def process(self, events):
        raise self.error

    def postprocess(self, accumulator):
        return accumulator


@pytest.mark.parametrize("error", [ValueError("a bug"), IndexError("a bug"), MemoryError()])
def test_a_processors_own_error_is_not_blamed_on_its_input(production, error):
    # never a bad input (which skipping would list as a loss of a good file): it propagates
    skip = runner.RunOptions(retries=0, skip_bad_inputs=True)
    with pytest.raises(type(error)):
        runner.run(production, ["signal"], _Buggy(error), "ita", None, 1000, skip)


# --- interrupted runs -------------------------------------------------------------------------


class _InterruptedError(Exception):
    pass


def test_an_interrupted_run_restarts_from_its_checkpoints(production, proc, reference, tmp_path):
    def stop_after_three(progress: runner.Progress) -> None:
        if progress.chunks_done == 3:
            raise _InterruptedError

    checkpoints = tmp_path / "checkpoints"
    first = runner.RunOptions(checkpoint_dir=checkpoints, progress=stop_after_three)
    with pytest.raises(_InterruptedError):
        runner.run(production, DATASETS, proc, "ita", None, 1000, first)
    saved = list(checkpoints.rglob("*.pkl"))
    assert len(saved) == 3
    again = runner.RunOptions(checkpoint_dir=checkpoints)
    out, report = runner.run(production, DATASETS, proc, "ita", None, 1000, again)
    assert report.chunks_from_checkpoint == 3
    assert_identical(out, reference[0])
    # another processor configuration (or other models: the fingerprint) starts afresh
    other = runner.RunOptions(checkpoint_dir=checkpoints, fingerprint="retrained models")
    _, report = runner.run(production, DATASETS, proc, "ita", None, 1000, other)
    assert report.chunks_from_checkpoint == 0


def test_a_hand_made_catalogue_gets_checksums_that_runs_then_verify(
    production, proc, tmp_path, capsys
):
    from knunu.cli import main

    good = production.datasets["signal"]["files"][0]
    copy_path = tmp_path / "mine.root"
    copy_path.write_bytes(Path(good["path"]).read_bytes())
    entry = {k: v for k, v in good.items() if k != "adler32"} | {"path": "mine.root"}
    doc = {"datasets": {"signal": {"files": [entry]}}}
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps(doc))
    assert main(["checksum", str(path)]) == 0
    assert "1 checksum(s) added, 0 verified" in capsys.readouterr().out
    written = json.loads(path.read_text())["datasets"]["signal"]["files"][0]
    assert written["adler32"] == adler32(copy_path)
    assert main(["checksum", str(path)]) == 0  # a second pass verifies
    assert "0 checksum(s) added, 1 verified" in capsys.readouterr().out
    # a changed byte: the run refuses the file, and so does the checksum command
    data = bytearray(copy_path.read_bytes())
    data[len(data) // 2] ^= 0x10
    copy_path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"mine\.root: checksum mismatch"):
        runner.run(runner.Catalogue.load(path), ["signal"], proc, "ita", None, 1000)
    assert main(["checksum", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "mine.root: checksum mismatch" in err[0]


#: A processor whose first chunk of one file needs ``gib`` GiB more than the ITA processor:
#: written as a module the workers import (they cannot import the tests).
_MEMORY_HOG = """
import time

import numpy as np
from coffea import processor


class MemoryHog(processor.ProcessorABC):
    def __init__(self, inner, path, gib):
        self.inner, self.path, self.gib = inner, path, gib

    def process(self, events):
        meta = events.metadata
        if meta["entrystart"] == 0 and meta["filename"] == self.path:
            block = np.ones(int(self.gib * 2**30 / 8))  # touched: resident
            time.sleep(5)  # long enough for the nanny's memory monitor
            del block
        return self.inner.process(events)

    def postprocess(self, accumulator):
        return accumulator
"""


@pytest.mark.slow
def test_a_chunk_beyond_the_memory_limit_ends_in_one_line_naming_it(
    production, proc, tmp_path, monkeypatch
):
    (tmp_path / "knunu_memory_hog.py").write_text(_MEMORY_HOG)
    monkeypatch.syspath_prepend(tmp_path)  # spawned workers start with this sys.path
    hog = importlib.import_module("knunu_memory_hog").MemoryHog
    path = production.paths(["charged"])[0]
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        get_client("local", n_workers=1, memory_limit="1GiB") as client,
        pytest.raises(ProcessingError) as err,
    ):
        runner.run(production, DATASETS, hog(proc, path, 1.5), "ita", client, 1000)
    message = str(err.value)
    assert "\n" not in message
    assert f"chunk {path} [0, 1000) failed" in message
    assert "2 workers died" in message
    assert "memory limit is 1.0 GiB" in message
    assert "KilledWorker" not in message


@pytest.mark.slow
def test_a_cluster_without_workers_stops_and_the_run_resumes(production, proc, reference, tmp_path):
    checkpoints = tmp_path / "checkpoints"

    with get_client("local", n_workers=2) as client:
        client.wait_for_workers(2, timeout=120)

        def end_every_job(progress: runner.Progress) -> None:
            if progress.chunks_done == 2:
                client.cluster.scale(0)  # as batch jobs reaching their walltime

        options = runner.RunOptions(
            checkpoint_dir=checkpoints, no_workers_timeout=3.0, progress=end_every_job
        )
        with pytest.raises(ProcessingError) as err:
            runner.run(production, DATASETS, proc, "ita", client, 1000, options)
    message = str(err.value)
    assert "\n" not in message
    assert "no Dask workers for 3 s" in message
    kept = len(list(checkpoints.rglob("*.pkl")))
    assert kept >= 2
    with get_client("local", n_workers=2) as client:
        again = runner.RunOptions(checkpoint_dir=checkpoints)
        out, report = runner.run(production, DATASETS, proc, "ita", client, 1000, again)
    assert report.chunks_from_checkpoint == kept
    assert_identical(out, reference[0])


def test_a_cluster_without_workers_stops_the_file_inspection_with_one_line(
    production, proc, tmp_path
):
    """The plan inspects the files on the workers; none there: one line, no hang (issue 21)."""
    with get_client("local", n_workers=1) as client:
        client.wait_for_workers(1, timeout=120)
        client.cluster.scale(0)  # every worker gone before the run starts
        while client.scheduler_info(n_workers=-1)["workers"]:
            time.sleep(0.1)
        options = runner.RunOptions(checkpoint_dir=tmp_path / "ck", no_workers_timeout=3.0)
        with pytest.raises(ProcessingError) as err:
            runner.run(production, DATASETS, proc, "ita", client, 1000, options)
    message = str(err.value)
    assert "\n" not in message
    assert "ita: no Dask workers for 3 s" in message
    assert "file inspections to go" in message
