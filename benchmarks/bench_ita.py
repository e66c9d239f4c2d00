"""ITA processor benchmark: events per CPU-second against a raw uproot read of the same branches.

Side by side in one process (1 core, IterativeExecutor): the full ITA processor (selection,
BDT1/BDT2/eta/BDTc, every variation, histograms) over a production's ``ita`` trees, and the
peer: ``uproot.iterate`` reading the branches the processor uses from the same files, in the
same chunk size. A second peer row reads every branch. Uses an existing run directory
(``--run DIR`` with ntuples/ and models/, e.g. runs/default after `make analysis`) or makes a
tiny production and training in a temporary folder. Writes benchmarks/results/ita.json.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import uproot
from _results import write_results

from knunu.config import load_config
from knunu.processors import run as runner
from knunu.processors.ita import ITAProcessor
from knunu.processors.stage import ITA_DATASETS


def _cpu() -> float:
    return time.process_time()


def _prepare(tmp: Path) -> tuple[Path, dict]:
    from knunu.cluster import get_client
    from knunu.pipeline import train_stage
    from knunu.simulation.production import plan_production, run_production

    config = load_config()
    config = {**config, "scale": "tiny", "ita": copy.deepcopy(config["ita"])}
    config["ita"].update(folds=2, bdtc_bdt1_min=0.0, bdtc_eta_min=0.0)
    config["ita"]["xgboost"]["bdtc"]["early_stopping_rounds"] = None  # needs 3 folds
    with get_client("local", n_workers=2) as client:
        run_production(plan_production(config, tmp / "ntuples"), client)
        train_stage(config, tmp, client)
    return tmp, config


def _raw_read(files: list[str], branches: list[str], chunksize: int) -> int:
    n = 0
    for arrays in uproot.iterate(
        {f: "ita" for f in files},
        filter_name=branches,  # data files have no truth branches
        step_size=chunksize,
        library="np",
    ):
        n += len(arrays["__event__"])
    return n


def add_run_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """--run, --chunksize (``unit`` per chunk) and --repeat, shared by the ITA benchmarks."""
    parser.add_argument("--run", type=Path, help="run directory with ntuples/ and models/")
    parser.add_argument("--chunksize", type=int, help=f"{unit} per chunk (default: ita.chunksize)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes per side (best kept)")


def prepared(args: argparse.Namespace, tmp: str) -> tuple[Path, dict]:
    """The run directory and the ``ita`` configuration with ``--chunksize``.

    The run is ``--run``, or a tiny production made in ``tmp``.
    """
    run_dir, config = (args.run, load_config()) if args.run else _prepare(Path(tmp))
    cfg = dict(config["ita"])
    if args.chunksize:
        cfg["chunksize"] = args.chunksize
    return run_dir, cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_run_arguments(parser, "entries")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, cfg = prepared(args, tmp)
        catalogue = runner.Catalogue.load(run_dir / "ntuples" / "catalogue.json")
        datasets = [d for d in ITA_DATASETS if d in catalogue.datasets]
        files = catalogue.paths(datasets)
        proc = ITAProcessor(str((run_dir / "models").resolve()), cfg)
        with uproot.open(catalogue.paths(["signal"])[0]) as f:
            all_branches = list(f["ita"].keys())
        wanted = {*proc.names, "nK", "nTracks", "theta_miss", "E_tot"}
        used = [b for b in all_branches if b in wanted]
        # warm the page cache and the model cache once, then time each side ``--repeat`` times,
        # interleaved, keeping each side's fastest pass (the least disturbed by other load)
        runner.run(catalogue, datasets, proc, "ita", None, cfg["chunksize"])
        sides = {
            "raw uproot read (used branches)": lambda: _raw_read(files, used, cfg["chunksize"]),
            "raw uproot read (all branches)": lambda: _raw_read(
                files, all_branches, cfg["chunksize"]
            ),
            "ITA processor (all variations)": lambda: sum(
                runner.run(catalogue, datasets, proc, "ita", None, cfg["chunksize"])[
                    1
                ].events_processed.values()
            ),
        }
        rows: dict[str, dict] = {}
        for _ in range(args.repeat):
            for name, side in sides.items():
                t0 = _cpu()
                n = side()
                cpu = _cpu() - t0
                if name not in rows or cpu < rows[name]["cpu_s"]:
                    rows[name] = {"events": n, "cpu_s": cpu}
        for row in rows.values():
            row["events_per_cpu_s"] = row["events"] / row["cpu_s"]
        peer = rows["raw uproot read (used branches)"]["events_per_cpu_s"]
        result = {
            "run": str(run_dir) if args.run else "tiny (temporary)",
            "chunksize": cfg["chunksize"],
            "repeat": args.repeat,
            "branches_used": len(used),
            "rows": rows,
            "ratio_to_raw_read": rows["ITA processor (all variations)"]["events_per_cpu_s"] / peer,
        }
    write_results("ita", result, echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
