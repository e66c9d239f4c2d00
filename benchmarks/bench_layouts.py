"""basf2's two ntuple layouts: the ITA processor against a raw uproot read, per layout.

The production's ITA datasets are rewritten in the candidate-based layout (VariablesToNtuple:
one row per candidate, event-level branches repeated); the event-based files are the
production's own. Side by side in one process (1 core), over each layout through
``knunu.processors.run``: the layout alone (a processor that reads every branch the ITA uses
through the NanoEvents and does nothing else) and the full ITA processor (selection, BDTs, every
variation, histograms); the peer is ``uproot.iterate`` reading the same branches from the same
files (in the candidate layout, rows: the same events), at its fastest setting per layout
(NumPy for flat branches, awkward for jagged ones). The plan (every file opened, its bookkeeping
and event identities read and checked) is timed alone too: it is part of every run, and the
raw read does none of it. The event files' catalogue checksums are dropped, so that both plans
check the same. Reported: events per CPU-second and the ratio to the peer of the same layout,
with and without the plan (target for the candidate layout: >= 0.8). Both layouts'
histograms must be identical (checked). Uses ``--run DIR`` (after `make analysis`) or a tiny
production made in a temporary folder. Writes benchmarks/results/layouts.json.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import awkward as ak
import numpy as np
import uproot
from _results import write_results
from bench_ita import add_run_arguments, prepared  # benchmarks/ is the script's folder
from coffea import processor

from knunu.processors import run as runner
from knunu.processors.ita import ITAProcessor
from knunu.processors.stage import ITA_DATASETS
from knunu.simulation.ntuple import read_event_tree, write_ntuple


def candidate_copy(
    catalogue: runner.Catalogue, datasets: list[str], where: Path
) -> runner.Catalogue:
    """The datasets' files rewritten candidate-based under ``where`` (same events)."""
    out = copy.deepcopy(catalogue.datasets)
    for ds in datasets:
        out[ds]["layout"] = "candidate"
        for f in out[ds]["files"]:
            trees = {t: read_event_tree(f["path"], t, keep_empty=False) for t in ("ita", "hta")}
            dst = where / ds / Path(f["path"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            written = write_ntuple(dst, trees, f["seed"], "candidate")
            if written["ita"] != f["entries_ita"]:
                raise SystemExit(f"{f['path']}: events without a candidate; not comparable")
            f.update(path=str(dst), adler32=None, entries_hta=written["hta"])
    return runner.Catalogue(catalogue.path, {ds: out[ds] for ds in datasets})


class Touch(processor.ProcessorABC):
    """Reads every given branch through the layout (NanoEvents) and nothing else: the cost of
    the layout layer itself, to set against a raw read of the same branches."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)

    def process(self, events: ak.Array) -> dict:
        n, kaons = 0, events.K
        for name in self.names:
            if name.startswith("K_"):
                if name[2:] in kaons.fields:  # data have no truth
                    n += len(ak.to_numpy(ak.flatten(kaons[name[2:]])))
            elif name in events.fields:
                n += len(ak.to_numpy(events[name]))
        return {events.metadata["dataset"]: {"events": len(events), "values": n}}

    def postprocess(self, accumulator: dict) -> dict:
        return accumulator


def raw_read(files: list[str], branches: list[str], step: int, library: str) -> int:
    """Rows read by ``uproot.iterate`` of ``branches``, in steps of ``step`` entries.

    ``library``: the peer's fastest per layout: ``np`` for flat branches (candidate layout),
    ``ak`` for jagged ones (event layout; NumPy makes an object array of arrays).
    """
    n = 0
    for arrays in uproot.iterate(
        {f: "ita" for f in files}, filter_name=branches, step_size=step, library=library
    ):
        n += len(arrays[branches[0]])
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_run_arguments(parser, "events")
    plan = "the plan alone (every file inspected)"
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, cfg = prepared(args, tmp)
        size = cfg["chunksize"]
        event = runner.Catalogue.load(run_dir / "ntuples" / "catalogue.json")
        for ds in event.datasets.values():  # the candidate copy has none: the same checks
            for f in ds["files"]:
                f["adler32"] = None
        datasets = [d for d in ITA_DATASETS if d in event.datasets]
        candidate = candidate_copy(event, datasets, Path(tmp) / "candidate")
        proc = ITAProcessor(str((run_dir / "models").resolve()), cfg)
        wanted = {*proc.names, "nK", "nTracks", "theta_miss", "E_tot"}
        layouts = {"event": event, "candidate": candidate}
        used, per_event = {}, {}
        for name, cat in layouts.items():
            with uproot.open(cat.paths(["signal"])[0]) as f:
                branches = f["ita"].keys()  # names (iterating a TTree gives branches)
                used[name] = [b for b in branches if b in wanted]
            events = sum(cat.entries("ita", d) for d in datasets)
            rows = sum(uproot.open(p)["ita"].num_entries for p in cat.paths(datasets))
            per_event[name] = rows / events
        outputs = {
            n: runner.run(c, datasets, proc, "ita", None, size)[0] for n, c in layouts.items()
        }
        for ds in datasets:  # the same histograms from both layouts
            a, b = outputs["event"][ds]["ita"], outputs["candidate"][ds]["ita"]
            if not np.array_equal(a.values(flow=True), b.values(flow=True)):
                raise SystemExit(f"{ds}: the layouts' histograms differ")

        def processor_side(cat: runner.Catalogue, work: processor.ProcessorABC) -> int:
            report = runner.run(cat, datasets, work, "ita", None, size)[1]
            return sum(report.events_processed.values())

        def plan_side(cat: runner.Catalogue) -> int:
            chunks = runner._plan(cat, datasets, "ita", size, runner.RunOptions())[0]
            return sum(c.events for c in chunks)

        sides = {}
        for name, cat in layouts.items():
            step = int(size * per_event[name])
            files = cat.paths(datasets)
            library = "np" if name == "candidate" else "ak"
            sides[f"{name}: raw uproot read"] = (
                lambda f=files, b=used[name], s=step, lib=library: raw_read(f, b, s, lib),
                per_event[name],
            )
            sides[f"{name}: the plan alone (every file inspected)"] = (
                lambda c=cat: plan_side(c),
                1.0,
            )
            touch = Touch([b for b in used["event"] if b != "nK"])
            sides[f"{name}: layout only (every used branch read through it)"] = (
                lambda c=cat, t=touch: processor_side(c, t),
                1.0,
            )
            sides[f"{name}: ITA processor"] = (lambda c=cat: processor_side(c, proc), 1.0)
        rows: dict[str, dict] = {}
        for _ in range(args.repeat):
            for name, (side, per) in sides.items():
                t0 = time.process_time()
                n = side() / per  # events (a raw read of the candidate layout counts rows)
                cpu = time.process_time() - t0
                if name not in rows or cpu < rows[name]["cpu_s"]:
                    rows[name] = {"events": round(n), "cpu_s": cpu}
        for row in rows.values():
            row["events_per_cpu_s"] = row["events"] / row["cpu_s"]
        result = {
            "run": str(run_dir) if args.run else "tiny (temporary)",
            "chunksize_events": size,
            "repeat": args.repeat,
            "candidates_per_event": per_event["candidate"],
            "branches_used": {k: len(v) for k, v in used.items()},
            "rows": rows,
            "ratio_to_raw_read_without_the_plan": {
                f"{name}: {side}": rows[f"{name}: {side}"]["events"]
                / (rows[f"{name}: {side}"]["cpu_s"] - rows[f"{name}: {plan}"]["cpu_s"])
                / rows[f"{name}: raw uproot read"]["events_per_cpu_s"]
                for name in layouts
                for side in ("layout only (every used branch read through it)", "ITA processor")
            },
            "ratio_to_raw_read": {
                f"{name}: {side}": rows[f"{name}: {side}"]["events_per_cpu_s"]
                / rows[f"{name}: raw uproot read"]["events_per_cpu_s"]
                for name in layouts
                for side in ("layout only (every used branch read through it)", "ITA processor")
            },
            "candidate_over_event_processor": rows["candidate: ITA processor"]["events_per_cpu_s"]
            / rows["event: ITA processor"]["events_per_cpu_s"],
        }
    write_results("layouts", result, echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
