"""knunu's processor against ROOT's RDataFrame on the same work, side by side.

The work: the ITA kaon candidate (kaon ID, |dz|, dr), the basic event selection (4 <= N_tracks
<= 10, E_tot > 4 GeV, 17 < theta_miss < 160 deg), the best candidate (lowest q2rec among the
good ones) and a weighted fit-like histogram (q2rec in the fit's bins x E_miss) with the
cutflow, over the ``ita`` trees of a production (no BDT: RDataFrame has no xgboost k-fold
models). knunu runs it as a coffea processor through ``knunu.processors.run`` (one core in
this process; two workers on a local Dask cluster); RDataFrame runs in ROOT's own wheel
(``root`` from PyPI, installed for this benchmark only into ``build/bench-root/``, never a
dependency of knunu) with 1 thread and with ``EnableImplicitMT(2)``. Both must give the same
histogram (checked). Reported: wall seconds, events per second per core, and the ratio
knunu / RDataFrame per core. One untimed pass puts the files in the page cache; the sides then
run interleaved ``--repeat`` times (RDataFrame twice per process: its first pass includes its
JIT compilation) and the best pass of each is kept. Writes benchmarks/results/rdataframe.json.

Needs a finished run (``--run runs/default`` after `make analysis`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import hist
import numpy as np
from _results import write_results
from coffea import processor

from knunu.config import load_config
from knunu.processors import run as runner
from knunu.processors.selection import CUTFLOW_STEPS, select

ROOT_WHEEL = "root==0.1a12"  # ROOT 6.40 as a Python wheel (alpha, benchmarks only)
Q2_EDGES = [-1.0, 4.0, 8.0, 25.0]
EMISS = (10, 0.0, 10.0)
DATASETS = ("ccbar", "uubar", "charged", "mixed")

RDF_SCRIPT = r"""
import json, sys, time
import ROOT
files, nthreads, cuts, repeat = json.loads(sys.argv[1])
if nthreads > 1:
    ROOT.EnableImplicitMT(nthreads)
passes = []
for _ in range(repeat):
    t0 = time.perf_counter()
    df = ROOT.RDataFrame("ita", files)
    kaon = (f"K_kaonID > {cuts['kaon_id_min']} && abs(K_dz) < {cuts['dz_max_cm']} "
            f"&& K_dr < {cuts['dr_max_cm']}")
    lo, hi = cuts["n_tracks"]
    t_lo, t_hi = cuts["theta_miss_deg"]
    sel = (df.Define("good", kaon)
             .Filter("Sum(good) > 0", "kaon candidate")
             .Filter(f"nTracks >= {lo} && nTracks <= {hi}", "n tracks")
             .Filter(f"E_tot > {cuts['e_tot_min']}", "E_tot")
             .Filter(f"theta_miss > {t_lo} && theta_miss < {t_hi}", "theta_miss")
             .Define("q2good", "ROOT::VecOps::Where(good, K_q2rec, "
                               "std::numeric_limits<double>::infinity())")
             .Define("best", "ROOT::VecOps::ArgMin(q2good)")
             .Define("q2", "K_q2rec[best]"))
    edges = ROOT.std.vector["double"]([-1.0, 4.0, 8.0, 25.0])
    model = ROOT.RDF.TH2DModel("h", "", 3, edges.data(), 10, 0.0, 10.0)
    h = sel.Histo2D(model, "q2", "E_miss", "__weight__")
    n = df.Count()
    report = sel.Report()
    values = [[h.GetBinContent(i, j) for j in range(1, 11)] for i in range(1, 4)]
    seconds = time.perf_counter() - t0
    passes.append(seconds)
cutflow = {c.GetName(): c.GetPass() for c in report}
print(json.dumps({"events": int(n.GetValue()), "passes": passes, "hist": values,
                  "cutflow": cutflow, "version": ROOT.gROOT.GetVersion()}))
"""


class BasicITA(processor.ProcessorABC):
    """knunu's side: the ITA selection and the fit-like histogram, nothing else."""

    def __init__(self, cuts: dict) -> None:
        self.cuts = dict(cuts)

    def process(self, events):
        sel = select(events, self.cuts, ("K_q2rec", "E_miss", "__weight__"))
        cols = sel.columns
        h = hist.Hist(
            hist.axis.Variable(Q2_EDGES, name="q2rec"),
            hist.axis.Regular(*EMISS, name="E_miss"),
            storage=hist.storage.Weight(),
        )
        h.fill(q2rec=cols["K_q2rec"], E_miss=cols["E_miss"], weight=cols["__weight__"])
        cutflow = {s: int(np.count_nonzero(m)) for s, m in sel.steps.items()}
        return {events.metadata["dataset"]: {"events": len(events), "h": h, "cutflow": cutflow}}

    def postprocess(self, accumulator):
        return accumulator


def root_python() -> Path:
    """The benchmark's own environment with ROOT's wheel (made on first use)."""
    env = Path(__file__).resolve().parent.parent / "build" / "bench-root"
    python = env / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", ROOT_WHEEL], check=True)
    return python


def rdataframe(files: list[str], threads: int, cuts: dict, repeat: int) -> dict:
    arg = json.dumps([files, threads, cuts, repeat])
    out = subprocess.run(
        [str(root_python()), "-W", "ignore", "-c", RDF_SCRIPT, arg],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def knunu_side(catalogue, datasets, cuts, client, chunksize: int, repeat: int) -> dict:
    proc = BasicITA(cuts)
    passes, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out, report = runner.run(catalogue, datasets, proc, "ita", client, chunksize)
        passes.append(time.perf_counter() - t0)
    h = sum(v["h"] for v in out.values())
    cutflow = {s: sum(v["cutflow"][s] for v in out.values()) for s in CUTFLOW_STEPS}
    events = sum(report.events_processed.values())
    return {"events": events, "passes": passes, "hist": h.values().tolist(), "cutflow": cutflow}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    config = load_config()
    cuts = dict(config["ita"]["selection"])
    chunksize = int(config["ita"]["chunksize"])
    catalogue = runner.Catalogue.load(args.run / "ntuples" / "catalogue.json")
    datasets = [d for d in DATASETS if d in catalogue.datasets]
    files = [str(Path(p).resolve()) for p in catalogue.paths(datasets)]
    from knunu.cluster import get_client

    # the files in the page cache for both sides alike: one untimed pass first
    knunu_side(catalogue, datasets, cuts, None, chunksize, 1)
    rows: dict[str, dict] = {}
    with get_client("local", n_workers=2, threads_per_worker=1) as client:
        sides = {
            "knunu, 1 core (this process)": lambda: knunu_side(
                catalogue, datasets, cuts, None, chunksize, 1
            ),
            "knunu, 2 Dask workers": lambda: knunu_side(
                catalogue, datasets, cuts, client, chunksize, 1
            ),
            "RDataFrame, 1 thread": lambda: rdataframe(files, 1, cuts, 2),
            "RDataFrame, 2 threads": lambda: rdataframe(files, 2, cuts, 2),
        }
        for _ in range(args.repeat):  # interleaved, so slow phases of the machine hit all
            for name, side in sides.items():
                row = side()
                if name in rows:
                    row["passes"] = rows[name]["passes"] + row["passes"]
                rows[name] = row
    ref = np.asarray(rows["RDataFrame, 1 thread"]["hist"])
    for name, row in rows.items():
        cores = 2 if "2" in name else 1
        row["best_s"] = min(row["passes"])
        row["events_per_s_per_core"] = row["events"] / row["best_s"] / cores
        row["same_histogram"] = bool(np.allclose(row["hist"], ref, rtol=1e-9, atol=1e-9))
        del row["hist"]
    for row in rows.values():
        row["same_cutflow"] = all(
            int(row["cutflow"][s]) == int(rows["RDataFrame, 1 thread"]["cutflow"][s])
            for s in CUTFLOW_STEPS[1:]
        )
    if not all(r["same_histogram"] and r["same_cutflow"] for r in rows.values()):
        raise SystemExit("bench_rdataframe: the two sides disagree; see the rows")
    result = {
        "run": str(args.run),
        "files": len(files),
        "datasets": datasets,
        "rows": rows,
        "ratio_knunu_over_rdf_per_core": {
            "1 core": rows["knunu, 1 core (this process)"]["events_per_s_per_core"]
            / rows["RDataFrame, 1 thread"]["events_per_s_per_core"],
            "2 cores": rows["knunu, 2 Dask workers"]["events_per_s_per_core"]
            / rows["RDataFrame, 2 threads"]["events_per_s_per_core"],
        },
    }
    write_results("rdataframe", result, echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
