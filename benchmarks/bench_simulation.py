"""Simulation benchmark: events per second per core, stage by stage, and luminosity per core-hour.

Side by side in one process (1 core): for each sample, generation (Pythia or library pairing),
detector, reconstruction (after the prefilter) and writing; the luminosity-equivalent produced
per core-hour; and the peer comparison for B Bbar: direct Pythia Upsilon(4S) generation
against pairing entries of the decay libraries, as effective (weighted) events per CPU-second
in the signal-like region of tests/simulation/test_composition.py. Writes
benchmarks/results/simulation.json. Run with `make bench`.

`python benchmarks/bench_simulation.py copyout` runs only the copy-out comparison on ccbar
(same seed, interleaved, best of 3): the per-particle loop after each `next()`, the bulk
`nextBatch` path of `Generator.generate`, the same with the event weights
(`generate_weighted`, the MC's path) and with ccbar's decays biased (`DecayBias`, weights from
the event record), and bare `next()` without copy-out (the floor).

`python benchmarks/bench_simulation.py hugepage` produces the same ccbar file (100k events,
as the default scale writes them: generation, detector, reconstruction, writing) with numpy's
huge-page advice on and off (knunu turns it off at import, ``knunu._no_hugepage_advice``),
interleaved, best of 2, with each run's user and system CPU.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import awkward as ak
import numpy as np
from _results import write_results

from knunu.samples import load_samples
from knunu.simulation import bdecays
from knunu.simulation.detector import DetectorConfig, simulate_detector
from knunu.simulation.generators import DecayBias, Generator
from knunu.simulation.kinematics import ON_RESONANCE
from knunu.simulation.ntuple import TREE_ITA, Tree, write_ntuple
from knunu.simulation.production import (
    FileTask,
    LibraryTask,
    build_library_file,
    generate_events,
    library_path,
    prefilter_mask,
    produce_file,
    sample_cross_section_nb,
)
from knunu.simulation.reconstruction import ita_variables

COPYOUT_EVENTS = 3000
COPYOUT_REPEATS = 3

EVENTS = {"uubar": 20000, "ccbar": 20000, "taupair": 10000, "charged": 50000, "signal": 20000}


def stages(task: FileTask) -> dict[str, float]:
    """Seconds per stage for one task."""
    rng = np.random.default_rng(task.seed)
    t0 = time.perf_counter()
    ev = generate_events(task, rng)
    t1 = time.perf_counter()
    seen = simulate_detector(ev.parts, ON_RESONANCE, DetectorConfig(), rng, ev.total)
    t2 = time.perf_counter()
    keep = np.flatnonzero(prefilter_mask(seen))
    sub = seen.take(keep)
    event, cand = ita_variables(sub)
    t3 = time.perf_counter()
    write_ntuple(task.path, {TREE_ITA: Tree(event, {"K_": (sub.tracks.offsets, cand)})}, 1)
    t4 = time.perf_counter()
    return {
        "generate": t1 - t0,
        "detector": t2 - t1,
        "reconstruct": t3 - t2,
        "write": t4 - t3,
        "kept": len(keep),
    }


def in_region(seen) -> tuple[np.ndarray, np.ndarray]:
    """Events in the signal-like region after the basic selection (per-event mask)."""
    keep = np.flatnonzero(prefilter_mask(seen))
    event, cand = ita_variables(seen.take(keep))
    offsets = seen.take(keep).tracks.offsets
    k = ak.unflatten(ak.zip({name[2:]: cand[name] for name in cand}), np.diff(offsets))
    k = k[(k.kaonID > 0.9) & (k.dr < 0.5) & (abs(k.dz) < 3)]
    best = k[ak.argmin(k.q2rec, axis=1, keepdims=True)][:, 0]
    ok = (event["theta_miss"] > 17) & (event["theta_miss"] < 160) & (event["E_tot"] > 4)
    ok &= np.asarray((event["R2"] < 0.2) & (best.roe_mbc > 5.2) & (abs(best.roe_deltaE) < 0.4))
    return keep, np.asarray(ok)


def copyout_comparison(
    n: int = COPYOUT_EVENTS, repeats: int = COPYOUT_REPEATS, seed: int = 7
) -> dict[str, dict[str, float]]:
    """ccbar generation with copy-out: per-particle loop vs nextBatch vs bare next().

    Each variant runs on a fresh generator with the same seed (the same events), the variants
    interleaved within each repeat; the best of ``repeats`` counts.
    """

    def loop(gen: Generator) -> None:
        gen._generate_loop(n, np.full(n, 10.58))

    def bulk(gen: Generator) -> None:
        gen.generate(n)

    def bare(gen: Generator) -> None:
        pythia = gen.pythia
        for _ in range(n):
            while not pythia.next():
                pass

    def weighted(gen: Generator) -> None:
        gen.generate_weighted(n)

    # (decay bias, run): the MC's path since stop 43 is generate_weighted (Pythia's weights),
    # with ccbar's decays biased (configs/analysis.yaml: the weights found from the record)
    variants = {
        "loop": (None, loop),
        "bulk": (None, bulk),
        "bulk_weighted": (None, weighted),
        "bulk_biased": (DecayBias(semileptonic=2.0, k_long=2.0), weighted),
        "bare_next": (None, bare),
    }
    Generator("ccbar", seed=seed).generate(200)  # warm-up (imports, awkward kernels)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, (bias, run) in variants.items():
            gen = Generator("ccbar", seed=seed, bias=bias)  # Pythia's init is not timed
            start = time.perf_counter()
            run(gen)
            best[name] = min(best[name], time.perf_counter() - start)
    out = {
        name: {"events": n, "us_per_event": 1e6 * s / n, "events_per_s": n / s}
        for name, s in best.items()
    }
    out["ratios"] = {
        "loop_over_bulk": best["loop"] / best["bulk"],
        "bulk_over_bare_next": best["bulk"] / best["bare_next"],
        "loop_over_bare_next": best["loop"] / best["bare_next"],
        "biased_over_weighted": best["bulk_biased"] / best["bulk_weighted"],
        "weighted_over_bulk": best["bulk_weighted"] / best["bulk"],
    }
    return out


def print_copyout(res: dict[str, dict[str, float]]) -> None:
    """Print the copy-out comparison as a table."""
    print(f"ccbar copy-out, {res['loop']['events']} events, best of {COPYOUT_REPEATS}:")
    for name in ("loop", "bulk", "bulk_weighted", "bulk_biased", "bare_next"):
        r = res[name]
        print(f"  {name:14s} {r['us_per_event']:8.1f} us/event {r['events_per_s']:10.0f} events/s")
    for name, ratio in res["ratios"].items():
        print(f"  {name:20s} {ratio:6.2f}")


def hugepage_comparison(n: int = 100_000, repeats: int = 2) -> dict[str, dict[str, float]]:
    """One ccbar file produced with numpy's MADV_HUGEPAGE advice on and off (same seed)."""
    from numpy._core.multiarray import _set_madvise_hugepage

    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        task = FileTask("ccbar", n, 11, f"{tmp}/ccbar.root")
        produce_file(dataclasses.replace(task, n_events=2000))  # warm-up, not timed
        for _ in range(repeats):
            for name, advice in (("advice_on", True), ("advice_off", False)):
                _set_madvise_hugepage(advice)
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                produce_file(task)
                wall = time.perf_counter() - t0
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                run = {
                    "wall_s": wall,
                    "user_s": r1.ru_utime - r0.ru_utime,
                    "system_s": r1.ru_stime - r0.ru_stime,
                    "us_per_event": 1e6 * wall / n,
                }
                if wall < best.get(name, {"wall_s": float("inf")})["wall_s"]:
                    best[name] = run
    _set_madvise_hugepage(False)
    best["ratio"] = {"on_over_off": best["advice_on"]["wall_s"] / best["advice_off"]["wall_s"]}
    return best


def print_hugepage(res: dict[str, dict[str, float]]) -> None:
    """Print the huge-page comparison."""
    print("ccbar file of 100k events, numpy's huge-page advice on and off (best of 2):")
    for name in ("advice_on", "advice_off"):
        r = res[name]
        print(f"  {name:10s} {r['wall_s']:6.1f} s ({r['us_per_event']:.0f} us/event), "
              f"user {r['user_s']:.1f} s, system {r['system_s']:.1f} s")  # fmt: skip
    print(f"  advice on / off: {res['ratio']['on_over_off']:.2f}x")


def main() -> int:
    if sys.argv[1:] == ["copyout"]:
        print_copyout(copyout_comparison())
        return 0
    if sys.argv[1:] == ["hugepage"]:
        print_hugepage(hugepage_comparison())
        return 0
    results: dict[str, object] = {"cores": 1}
    results["generator_copyout_ccbar"] = copyout_comparison()
    print_copyout(results["generator_copyout_ccbar"])
    results["hugepage_ccbar"] = hugepage_comparison()
    print_hugepage(results["hugepage_ccbar"])
    with tempfile.TemporaryDirectory() as tmp:
        lib_dir = Path(tmp) / "lib"
        start = time.perf_counter()
        jobs = bdecays.library_jobs(20000, 2000)
        for k, (sp, st, n) in enumerate(jobs):
            build_library_file(LibraryTask(sp, st, n, 10 + k, str(library_path(lib_dir, sp, st))))
        lib_s = time.perf_counter() - start
        n_lib = sum(n for _, _, n in jobs)
        results["libraries"] = {"decays": n_lib, "seconds": lib_s, "per_s": n_lib / lib_s}

        stages(FileTask("ccbar", 500, 2, f"{tmp}/warm.root"))  # numba compilation, not timed
        per_sample = {}
        for name, n in EVENTS.items():
            task = FileTask(name, n, 3, f"{tmp}/{name}.root", libraries=str(lib_dir))
            t = stages(task)
            total = sum(v for k, v in t.items() if k != "kept")
            xs = sample_cross_section_nb(load_samples()[name]) * 1e6
            per_sample[name] = {
                "events": n,
                **{f"{k}_us_per_event": 1e6 * v / n for k, v in t.items() if k != "kept"},
                "kept_fraction": t["kept"] / n,
                "events_per_s": n / total,
                "fb_per_core_hour": n / total * 3600 / xs,
            }
        results["samples"] = per_sample

        # peer: direct Upsilon(4S) -> B+B- in Pythia vs pairing library entries
        n_direct, n_pair = 20000, 200000
        start = time.perf_counter()
        gen = Generator("bbbar", seed=5, extra=("300553:oneChannel = 1 1.0 0 521 -521",))
        parts = gen.generate(n_direct)
        rng = np.random.default_rng(5)
        seen = simulate_detector(parts, ON_RESONANCE, DetectorConfig(), rng)
        _, ok = in_region(seen)
        direct_s = time.perf_counter() - start
        start = time.perf_counter()
        task = FileTask("charged", n_pair, 6, "unused", libraries=str(lib_dir))
        rng = np.random.default_rng(6)
        ev = generate_events(task, rng)
        seen = simulate_detector(ev.parts, ON_RESONANCE, DetectorConfig(), rng, ev.total)
        keep, ok_p = in_region(seen)
        pair_s = time.perf_counter() - start
        w = ev.truth["weight"][keep][ok_p]
        n_eff = w.sum() ** 2 / (w**2).sum() if len(w) else 0.0
        # library cost amortised over the default scale's B+B- MC (charged: 5 x 0.109 fb^-1)
        default_events = 5 * 362 * 3e-4 * sample_cross_section_nb(load_samples()["charged"]) * 1e6
        share = lib_s * (0.5 * n_pair / (default_events + n_pair))  # charged libraries: half
        results["bbbar_peer"] = {
            "direct": {
                "events": n_direct,
                "seconds": direct_s,
                "events_per_s": n_direct / direct_s,
                "region_events": int(ok.sum()),
                "region_eff_per_cpu_s": ok.sum() / direct_s,
            },
            "paired": {
                "events": n_pair,
                "seconds": pair_s,
                "events_per_s": n_pair / pair_s,
                "region_events": int(ok_p.sum()),
                "region_n_eff": float(n_eff),
                "region_eff_per_cpu_s": n_eff / pair_s,
                "with_library_share_per_cpu_s": n_eff / (pair_s + share),
            },
        }
        gain = (n_eff / pair_s) / max(ok.sum() / direct_s, 1e-12)
        results["bbbar_peer"]["gain_effective_region_stats_per_cpu_s"] = gain
    write_results("simulation", results, echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
