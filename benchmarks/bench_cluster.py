"""Cluster benchmark: time to get workers on each backend, and processing throughput with 1 and 2
workers on the same input (scaling efficiency), against the in-process run as the peer.

Backends: ``local`` always; ``slurm`` and ``htcondor`` when their daemons run (cluster/scripts/
slurm.sh and htcondor.sh; ``--start`` brings them up and down). The input is the ITA processor
(every variation) over a run directory's ``ita`` trees (``--run DIR``, e.g. runs/default after
`make analysis`) or over a tiny production made in a temporary folder. Passes are interleaved
and the fastest of ``--repeat`` kept per row. Writes benchmarks/results/cluster.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from _results import write_results
from bench_ita import _prepare

from knunu.cluster import get_client
from knunu.config import load_config
from knunu.processors import run as runner
from knunu.processors.ita import ITAProcessor
from knunu.processors.stage import ITA_DATASETS

SCRIPTS = Path(str(resources.files("knunu.cluster").joinpath("scripts")))
POOL = Path(os.environ.get("KNUNU_CONDOR_DIR", "/tmp/knunu-condor"))
OVERRIDES = {
    "local": {},
    "slurm": {"interface": "lo", "queue": "debug", "walltime": "00:30:00"},
    "htcondor": {
        "interface": "lo",
        "shared_temp_directory": str(POOL / "shared"),
        "log_directory": str(POOL / "joblogs"),
    },
}


def _script(name: str, action: str) -> bool:
    env = {**os.environ, "KNUNU_PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPTS / f"{name}.sh"), action], env=env).returncode == 0


def _workers(backend: str, n: int) -> dict:
    if backend == "local":
        return {**OVERRIDES[backend], "n_workers": n}
    return {**OVERRIDES[backend], "minimum_jobs": n, "maximum_jobs": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory with ntuples/ and models/")
    parser.add_argument("--repeat", type=int, default=3, help="passes per row (best kept)")
    parser.add_argument("--start", action="store_true", help="bring SLURM and HTCondor up/down")
    args = parser.parse_args()
    os.environ["SLURM_CONF"] = "/tmp/knunu-slurm/slurm.conf"
    os.environ["PATH"] = f"{POOL / 'bin'}:{os.environ['PATH']}"
    started = []
    backends = ["local"]
    for name in ("slurm", "htcondor"):
        if _script(name, "status"):
            backends.append(name)
        elif args.start and _script(name, "up"):
            started.append(name)
            backends.append(name)
    try:
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            os.chmod(tmp, 0o755)  # the HTCondor job user reads the inputs
            run_dir, config = (args.run, load_config()) if args.run else _prepare(Path(tmp))
            result = _measure(run_dir, config, backends, args.repeat)
    finally:
        for name in started:
            _script(name, "down")
    result["run"] = str(args.run) if args.run else "tiny (temporary)"
    write_results("cluster", result, echo=True)
    return 0


def _measure(run_dir: Path, config: dict, backends: list[str], repeat: int) -> dict:
    catalogue = runner.Catalogue.load(run_dir / "ntuples" / "catalogue.json")
    datasets = [d for d in ITA_DATASETS if d in catalogue.datasets]
    cfg = config["ita"]
    proc = ITAProcessor(str((run_dir / "models").resolve()), cfg)
    events = sum(catalogue.entries("ita", d) for d in datasets)

    def process(client) -> float:
        tic = time.perf_counter()
        runner.run(catalogue, datasets, proc, "ita", client, int(cfg["chunksize"]))
        return time.perf_counter() - tic

    process(None)  # warm the page cache and the model cache
    startup: dict[str, list[float]] = {b: [] for b in backends}
    walls: dict[str, list[float]] = {"in-process": []}
    for _ in range(repeat):
        walls["in-process"].append(process(None))
        for backend in backends:
            for n in (1, 2):
                tic = time.perf_counter()
                with get_client(backend, **_workers(backend, n)) as client:
                    client.wait_for_workers(n, timeout=300)
                    if n == 2:
                        startup[backend].append(time.perf_counter() - tic)
                    process(client)  # first pass on fresh workers loads the models
                    walls.setdefault(f"{backend}, {n} worker(s)", []).append(process(client))
    rows = {k: {"wall_s": min(v), "events_per_s": events / min(v)} for k, v in walls.items()}
    peer = rows["in-process"]["events_per_s"]
    scaling = {}
    for backend in backends:
        one = rows[f"{backend}, 1 worker(s)"]["events_per_s"]
        two = rows[f"{backend}, 2 worker(s)"]["events_per_s"]
        scaling[backend] = {
            "seconds_to_2_workers": min(startup[backend]),
            "1_worker_vs_in_process": one / peer,
            "2_workers_vs_1": two / one,
            "scaling_efficiency": two / (2 * one),
        }
    return {
        "events": events,
        "chunksize": int(cfg["chunksize"]),
        "cores": os.cpu_count(),
        "rows": rows,
        "backends": scaling,
    }


if __name__ == "__main__":
    raise SystemExit(main())
