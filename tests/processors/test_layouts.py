"""basf2's two ntuple layouts, variable aliases, compressions and bad layouts.

The tiny production's files are rewritten in the candidate-based layout (VariablesToNtuple:
one row per candidate), once with knunu's names and once with basf2's names behind aliases and
another weight branch; the ITA and HTA processors must give bit-identical histograms to the
event-based files of the same events, chunk for chunk.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from coffea import processor

from knunu.errors import InputError
from knunu.processors import run as runner
from knunu.processors.hta import HTAProcessor
from knunu.processors.ita import ITAProcessor
from knunu.processors.layouts import root_compatible
from knunu.simulation.ntuple import Tree, write_ntuple
from knunu.simulation.ntuple import read_event_tree as read_tree

_spec = importlib.util.spec_from_file_location("test_run", Path(__file__).with_name("test_run.py"))
_test_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_test_run)
assert_identical = _test_run.assert_identical

ITA_SETS = ["signal", "charged", "data_on"]
HTA_SETS = ["signal", "charged", "data_on"]
#: basf2 names the aliased copy stores for some analysis names (the rest lose their prefix)
BASF2_NAMES = {"K_pstar": "useCMSFrame(p)", "K_kaonID": "pidProbabilityExpert(321, ALL)"}


def basf2_names(tree: Tree) -> tuple[Tree, dict[str, str]]:
    """The tree with candidate variables under basf2 names, and the aliases back."""
    ((prefix, (offsets, columns)),) = tree.collections.items()
    aliases = {name: BASF2_NAMES.get(name, name[len(prefix) :]) for name in columns}
    renamed = {root_compatible(aliases[name]): values for name, values in columns.items()}
    event = {("mcWeight" if k == "__weight__" else k): v for k, v in tree.columns.items()}
    event["__weight__"] = np.ones(len(event["__event__"]))  # basf2's own, not the MC weight
    return Tree(event, {prefix: (offsets, renamed)}), aliases


def rewrite(production, tmp_path: Path, layout: str, names: str = "knunu") -> runner.Catalogue:
    """The production's datasets rewritten: only events with a candidate, in ``layout``."""
    datasets = copy.deepcopy(production.datasets)
    for ds, entry in datasets.items():
        aliases: dict[str, dict[str, str]] = {}
        for f in entry["files"]:
            trees = {t: read_tree(f["path"], t, keep_empty=False) for t in ("ita", "hta")}
            if names == "basf2":
                for t, tree in trees.items():
                    trees[t], aliases[t] = basf2_names(tree)
            dst = tmp_path / layout / names / ds / Path(f["path"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            written = write_ntuple(dst, trees, f["seed"], layout)
            f.update(path=str(dst), adler32=None, **{f"entries_{t}": n for t, n in written.items()})
        entry["layout"] = layout
        if names == "basf2":
            entry["aliases"] = aliases  # per tree: both trees have a "charge"
            entry["weight_branch"] = "mcWeight"
    return runner.Catalogue(production.path, datasets)


@pytest.fixture(scope="module")
def layouts(production, tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    return {
        "event": rewrite(production, base, "event"),
        "candidate": rewrite(production, base, "candidate"),
        "candidate, basf2 names": rewrite(production, base, "candidate", "basf2"),
    }


def test_the_candidate_layout_has_one_row_per_candidate(layouts):
    event, candidate = layouts["event"], layouts["candidate"]
    f_event = event.datasets["charged"]["files"][0]
    f_cand = candidate.datasets["charged"]["files"][0]
    with uproot.open(f_event["path"]) as a, uproot.open(f_cand["path"]) as b:
        n_k = a["ita"]["nK"].array(library="np")
        rows = b["ita"].arrays(["__event__", "__candidate__", "__ncandidates__"], library="np")
        assert "nK" not in b["ita"]
    assert len(rows["__event__"]) == n_k.sum() > len(n_k)
    assert f_cand["entries_ita"] == f_event["entries_ita"] == len(n_k)
    np.testing.assert_array_equal(np.repeat(n_k, n_k), rows["__ncandidates__"])
    assert (rows["__candidate__"] < rows["__ncandidates__"]).all()


@pytest.mark.parametrize("variant", ["candidate", "candidate, basf2 names"])
@pytest.mark.parametrize("chunksize", [1000, 333])
def test_both_layouts_give_bit_identical_ita_histograms(layouts, trained, cfg, variant, chunksize):
    proc = ITAProcessor(str(trained[0] / "models"), cfg["ita"])
    ref, ref_report = runner.run(layouts["event"], ITA_SETS, proc, "ita", None, chunksize)
    out, report = runner.run(layouts[variant], ITA_SETS, proc, "ita", None, chunksize)
    assert report.events_in == ref_report.events_in == report.events_processed
    assert report.chunks == ref_report.chunks
    assert sum(ref[ds]["ita"].values().sum() for ds in ITA_SETS) > 0
    assert_identical(out, ref)


def test_both_layouts_give_bit_identical_hta_histograms(layouts, trained, cfg):
    proc = HTAProcessor(str(trained[0] / "models"), cfg["hta"])
    ref, _ = runner.run(layouts["event"], HTA_SETS, proc, "hta", None, 500)
    for variant in ("candidate", "candidate, basf2 names"):
        out, report = runner.run(layouts[variant], HTA_SETS, proc, "hta", None, 500)
        assert report.events_processed == report.events_in
        assert_identical(out, ref)


class Best(processor.ProcessorABC):
    """The lowest-q2rec candidate per event, weighted; event-level sums; event counts."""

    def process(self, events: ak.Array) -> dict:
        kaons = events.K
        best = ak.firsts(kaons[ak.argmin(kaons.q2rec, axis=1, keepdims=True)])
        h = hist.Hist(hist.axis.Regular(20, 0, 25, name="q2"), storage=hist.storage.Weight())
        h.fill(q2=ak.to_numpy(best.q2rec), weight=ak.to_numpy(events["__weight__"]))
        return {
            events.metadata["dataset"]: {
                "events": len(events),
                "q2": h,
                "candidates": int(ak.sum(events.nK)),
                "E_tot": float(np.sum(ak.to_numpy(events.E_tot))),
                "ids": [
                    (int(r), int(e)) for r, e in zip(events.__run__, events.__event__, strict=True)
                ],
            }
        }

    def postprocess(self, accumulator: dict) -> dict:
        return accumulator


def head(tree: Tree, n: int) -> Tree:
    """The first ``n`` events of a tree."""
    ((prefix, (offsets, columns)),) = tree.collections.items()
    stop = int(offsets[n])
    return Tree(
        {k: v[:n] for k, v in tree.columns.items()},
        {prefix: (offsets[: n + 1], {k: v[:stop] for k, v in columns.items()})},
    )


@pytest.fixture(scope="module")
def small(layouts, tmp_path_factory):
    """The first 150 events of a charged file: ``layout -> (write(compression), catalogue)``."""
    base = tmp_path_factory.mktemp("small")
    f = layouts["event"].datasets["charged"]["files"][0]
    trees = {t: head(read_tree(f["path"], t), 150) for t in ("ita", "hta")}

    def make(layout: str, compression: object = None) -> runner.Catalogue:
        path = base / f"{layout}-{compression}.root"
        written = write_ntuple(path, trees, f["seed"], layout, compression)
        files = [{"path": str(path), **{f"entries_{t}": n for t, n in written.items()}}]
        return runner.Catalogue(base, {"charged": {"layout": layout, "files": files}})

    return make


def test_chunks_of_a_candidate_tree_never_split_an_event(small):
    """Chunk sizes down to 1 event: every boundary lands between two events' rows."""
    event, candidate = small("event"), small("candidate")
    n = event.entries("ita", "charged")
    assert n == 150
    for size in (1, 2, 5, n - 1, n):
        ref, _ = runner.run(event, ["charged"], Best(), "ita", None, size)
        out, report = runner.run(candidate, ["charged"], Best(), "ita", None, size)
        assert report.chunks == -(-n // size)
        assert out["charged"]["events"] == n
        assert out["charged"]["ids"] == ref["charged"]["ids"]  # each event once, in order
        assert_identical(out, ref)


@pytest.mark.parametrize("layout", ["event", "candidate"])
@pytest.mark.parametrize(
    "compression", [uproot.ZLIB(4), uproot.LZMA(2), uproot.ZSTD(3), uproot.LZ4(1)], ids=str
)
def test_every_compression_reads_the_same(small, layout, compression):
    ref, _ = runner.run(small("event"), ["charged"], Best(), "ita", None, 40)
    out, _ = runner.run(small(layout, compression), ["charged"], Best(), "ita", None, 40)
    assert out["charged"]["q2"].values().sum() > 0
    assert_identical(out, ref)


# ---------------------------------------------------------------------------- bad layouts


def _candidate_file(tmp_path: Path, rows: dict[str, list], name: str = "bad.root") -> str:
    path = tmp_path / name
    arrays = {k: np.asarray(v) for k, v in rows.items()}
    with uproot.recreate(path) as f:
        f.mktree("ita", {k: v.dtype for k, v in arrays.items()})
        f["ita"].extend(arrays)
    return str(path)


GOOD = {
    "__experiment__": [1, 1, 1, 1],
    "__run__": [2, 2, 2, 2],
    "__event__": [10, 10, 11, 12],
    "__candidate__": [0, 1, 0, 0],
    "__ncandidates__": [2, 2, 1, 1],
    "__weight__": [1.0, 1.0, 1.0, 1.0],
    "K_q2rec": [1.0, 2.0, 3.0, 4.0],
    "E_tot": [5.0, 5.0, 6.0, 7.0],
}


def _catalogue(paths: list[str], **keys) -> runner.Catalogue:
    files = [{"path": p, "entries_ita": n, "entries_hta": 0} for p, n in paths]
    return runner.Catalogue(
        Path("user.yaml"), {"charged": {"layout": "candidate", "files": files, **keys}}
    )


def test_an_empty_candidate_tree_holds_no_event(tmp_path):
    path = _candidate_file(tmp_path, {k: np.asarray(v)[:0] for k, v in GOOD.items()})
    out, report = runner.run(_catalogue([(path, 0)]), ["charged"], Best(), "ita", None, 2)
    assert out == {}
    assert report.chunks == 0
    assert report.events_in == {"charged": 0}


def test_a_good_candidate_file_is_read(tmp_path):
    path = _candidate_file(tmp_path, GOOD)
    out, report = runner.run(_catalogue([(path, 3)]), ["charged"], Best(), "ita", None, 2)
    assert out["charged"]["events"] == 3
    assert out["charged"]["candidates"] == 4
    assert report.chunks == 2


BAD = {
    "rows of one event not contiguous": (
        {
            "__event__": [10, 11, 10, 12],
            "__candidate__": [0, 0, 1, 0],
            "__ncandidates__": [2, 1, 2, 1],
        },
        r"__ncandidates__ is 2 at row 0, but its event has 1 contiguous row",
    ),
    "__ncandidates__ disagreeing with the rows": (
        {"__ncandidates__": [2, 2, 2, 1]},
        r"__ncandidates__ is 2 at row 2, but its event has 1 contiguous row",
    ),
    "__candidate__ out of order": (
        {"__candidate__": [1, 0, 0, 0]},
        r"__candidate__ is 1 at row 0, expected 0",
    ),
    "no candidate bookkeeping": (
        {"__candidate__": None},
        r"no __candidate__ \(not a basf2 candidate-based tree\)",
    ),
    "event split in two runs of rows": (
        {
            "__event__": [10, 11, 10, 12],
            "__candidate__": [0, 0, 0, 0],
            "__ncandidates__": [1, 1, 1, 1],
        },
        r"event \(experiment 1, run 2, event 10\) appears more than once",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_candidate_layout_ends_in_one_line_naming_file_and_tree(tmp_path, case):
    change, message = BAD[case]
    rows = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = _candidate_file(tmp_path, rows)
    with pytest.raises(InputError, match=message) as err:
        runner.run(_catalogue([(path, 3)]), ["charged"], Best(), "ita", None, 2)
    assert str(err.value).startswith(f"{path}: tree 'ita': ")
    assert "\n" not in str(err.value)


def test_the_same_event_in_two_files_of_a_dataset_is_refused(tmp_path):
    a = _candidate_file(tmp_path, GOOD, "a.root")
    b = _candidate_file(tmp_path, {**GOOD, "__event__": [20, 20, 21, 11]}, "b.root")
    with pytest.raises(
        InputError,
        match=r"b\.root: tree 'ita': event \(experiment 1, run 2, event 11\) is also in .*a\.root",
    ):
        runner.run(_catalogue([(a, 3), (b, 3)]), ["charged"], Best(), "ita", None, 2)


def test_mc_numbering_its_events_alike_in_every_job_can_say_so(tmp_path):
    a = _candidate_file(tmp_path, GOOD, "a.root")
    b = _candidate_file(tmp_path, {**GOOD, "__event__": [20, 20, 21, 11]}, "b.root")
    catalogue = _catalogue([(a, 3), (b, 3)], unique_events=False)
    out, _ = runner.run(catalogue, ["charged"], Best(), "ita", None, 2)
    assert out["charged"]["events"] == 6


def test_an_event_variable_that_differs_between_its_rows_is_refused(tmp_path):
    path = _candidate_file(tmp_path, {**GOOD, "E_tot": [5.0, 5.5, 6.0, 7.0]})
    with pytest.raises(
        InputError,
        match=r"tree 'ita': branch 'E_tot' \(E_tot\) differs between the rows of one event "
        r"\(row 1\): a candidate variable needs an alias with the K_ prefix",
    ):
        runner.run(_catalogue([(path, 3)]), ["charged"], Best(), "ita", None, 2)


def test_two_aliases_of_one_branch_are_refused(tmp_path):
    path = _candidate_file(tmp_path, {**GOOD, "q2": GOOD["K_q2rec"]})
    aliases = {"K_q2rec": "q2", "K_p": "q2"}
    with pytest.raises(InputError, match=r"tree 'ita': aliases 'K_p' and 'K_q2rec' both read"):
        runner.run(_catalogue([(path, 3)], aliases=aliases), ["charged"], Best(), "ita", None, 2)


def test_event_layout_with_basf2_names_tree_names_and_weight_branch(small, tmp_path):
    """The event layout through the renamed schema: event-level aliases, a weight branch,
    the file's own tree names."""
    ref, _ = runner.run(small("event"), ["charged"], Best(), "ita", None, 40)
    (f,) = small("event").datasets["charged"]["files"]
    trees = {}
    for tree, name in (("ita", "myITA"), ("hta", "myHTA")):
        t = read_tree(f["path"], tree)
        columns = {
            {"__weight__": "mcWeight", "E_tot": "useCMSFrame__boE__bc"}.get(k, k): v
            for k, v in t.columns.items()
        }
        columns["__weight__"] = np.zeros(len(columns["__event__"]))  # basf2's own weight
        trees[name] = Tree(columns, t.collections)
    path = tmp_path / "renamed.root"
    write_ntuple(path, trees, 1, "event")
    entry = {
        "layout": "event",
        "trees": {"ita": "myITA", "hta": "myHTA"},
        "aliases": {"E_tot": "useCMSFrame(E)"},
        "weight_branch": "mcWeight",
        "files": [{**f, "path": str(path)}],
    }
    out, _ = runner.run(
        runner.Catalogue(tmp_path, {"charged": entry}), ["charged"], Best(), "ita", None, 40
    )
    assert_identical(out, ref)


class Reads(Best):
    """Best, saying which variables it reads (as knunu's processors do in ``names``)."""

    names = ("K_q2rec", "K_pstar", "mcDtoKL", "E_tot")


def test_a_variable_the_processor_reads_is_named_before_any_chunk(tmp_path):
    path = _candidate_file(tmp_path, GOOD)
    mc = _catalogue([(path, 3)])
    with pytest.raises(
        InputError,
        match=rf"^{path}: tree 'ita': no K_pstar, mcDtoKL \(read by Reads; dataset charged\)",
    ):
        runner.run(mc, ["charged"], Reads(), "ita", None, 2)
    data = runner.Catalogue(mc.path, {"data_on": mc.datasets["charged"]})
    with pytest.raises(InputError, match=r"tree 'ita': no K_pstar \(read by Reads"):  # no truth
        runner.run(data, ["data_on"], Reads(), "ita", None, 2)


def test_a_missing_weight_branch_or_alias_is_named_before_any_chunk(tmp_path):
    path = _candidate_file(tmp_path, GOOD)
    with pytest.raises(
        InputError, match=rf"{path}: tree 'ita': no branch 'mcWeight' \(weight branch\)"
    ):
        runner.run(
            _catalogue([(path, 3)], weight_branch="mcWeight"), ["charged"], Best(), "ita", None, 2
        )
    aliases = {"K_pstar": "useCMSFrame(p)"}
    with pytest.raises(
        InputError,
        match=rf"{path}: tree 'ita': no branch 'useCMSFrame__bop__bc' \(alias of 'K_pstar'\)",
    ):
        runner.run(_catalogue([(path, 3)], aliases=aliases), ["charged"], Best(), "ita", None, 2)


def test_an_rntuple_is_refused_with_one_line(tmp_path):
    path = tmp_path / "rntuple.root"
    with uproot.recreate(path) as f:
        f["ita"] = {k: np.asarray(v) for k, v in GOOD.items()}  # uproot 5.7 writes an RNTuple
    with pytest.raises(InputError, match=r"tree 'ita': a \w+, not a TTree"):
        runner.run(_catalogue([(str(path), 3)]), ["charged"], Best(), "ita", None, 2)


def test_a_nan_in_a_branch_the_processor_reads_is_a_bad_input(tmp_path):
    path = _candidate_file(
        tmp_path, {**GOOD, "K_q2rec": [1.0, np.nan, 3.0, 4.0], "unused": [np.nan] * 4}
    )
    with pytest.raises(InputError, match=r"1 NaN/inf value\(s\) in branch 'K_q2rec'"):
        runner.run(_catalogue([(path, 3)]), ["charged"], Best(), "ita", None, 2)
    # NaN in a branch nobody reads (basf2 writes NaN where a variable is undefined) is fine
    clean = _candidate_file(tmp_path, {**GOOD, "unused": [np.nan] * 4}, "clean.root")
    out, _ = runner.run(_catalogue([(clean, 3)]), ["charged"], Best(), "ita", None, 2)
    assert out["charged"]["events"] == 3


class Declared(Best):
    """:class:`Best` declaring what it reads (``names``): those branches come in one request."""

    names = ("K_q2rec", "E_tot", "__weight__", "unused")


def test_a_nan_in_a_declared_branch_read_in_one_request_is_still_caught(tmp_path):
    path = _candidate_file(
        tmp_path, {**GOOD, "E_tot": [5.0, 5.0, np.inf, 7.0], "unused": [np.nan] * 4}
    )
    with pytest.raises(InputError, match=r"1 NaN/inf value\(s\) in branch 'E_tot'"):
        runner.run(_catalogue([(path, 3)]), ["charged"], Declared(), "ita", None, 2)
    # declared but never touched: read with the others, its NaN no error
    clean = _candidate_file(tmp_path, {**GOOD, "unused": [np.nan] * 4}, "clean.root")
    out, _ = runner.run(_catalogue([(clean, 3)]), ["charged"], Declared(), "ita", None, 2)
    assert out["charged"]["events"] == 3
    assert out["charged"]["E_tot"] == 18.0


CHANGED = {  # the tiny file rewritten after the plan cut it into chunks of 2 and 1 events
    "two events instead of three": (
        {"__event__": [10, 10, 11, 11], "__candidate__": [0, 1, 0, 1]},
        r"row 3 continues an event that rows \[0, 3\) end before",
    ),
    "a row appended to the last event": (
        {k: [*v, v[-1]] for k, v in {**GOOD, "__candidate__": [0, 1, 0, 0]}.items()}
        | {"__candidate__": [0, 1, 0, 0, 1]},
        r"row 4 continues an event that rows \[3, 4\) end before",
    ),
}


@pytest.mark.parametrize("case", list(CHANGED))
def test_a_file_changed_after_the_plan_is_refused_by_its_chunks(tmp_path, case):
    path = _candidate_file(tmp_path, GOOD)
    chunks, _ = runner._plan(_catalogue([(path, 3)]), ["charged"], "ita", 2, runner.RunOptions())
    assert [(c.start, c.stop, c.n_events) for c in chunks] == [(0, 3, 2), (3, 4, 1)]
    _candidate_file(tmp_path, {**GOOD, **CHANGED[case][0]})  # rewritten in place
    problems = []
    for chunk in chunks:
        try:
            runner._process(chunk, Declared())
        except InputError as exc:
            problems.append(str(exc))
    assert problems, "a changed file went through unnoticed"
    assert any(re.search(CHANGED[case][1], p) for p in problems), problems
    assert all(p.startswith(f"{path}: tree 'ita': ") and p.endswith("inspected)") for p in problems)
