"""Where the ITA signal region's continuum comes from: generator truth of selected continuum.

Generates continuum events, runs the detector and the ITA reconstruction, selects the kaon
candidate as the processors do, scores with a run's trained models (BDT1, BDT2, eta) and
reports, per region (after BDT1; eta > 0.8, the factorised templates' loose region; eta >
0.92), the kept fraction per generated event and the share of events holding an antineutron,
a neutron, a K_L and a neutrino.

With ``--bias-grid`` it also weighs the same (unbiased) events for each decay bias of a grid
(:class:`~knunu.simulation.generators.DecayBias`: charm semileptonic x K0 -> K_L scales) and
reports the effective events per generated event each would give in every region, relative
to the unbiased generation: 1 / E[w | region], with w the weight the biased generation would
give the event (importance sampling: the effective events of a proposal q per generated event
are P(region)^2 / E_p[w 1_region]).

With ``--copies N`` each generated event also passes the detector N times (independent
detector streams, each copy weighted 1/N) and it reports, per region, what N copies would give
per generated event against one: N sum(w^2 k) / sum(w^2 k^2), with k the copies of an event
in the region (the events' probabilities k/N; a region set by the detector's response gains
up to N, one set by the generated event gains nothing), and the CPU of generation and of a
copy (detector, prefilter, reconstruction of what it keeps) per event.

Usage: python benchmarks/study_continuum.py --run runs/default --events 200000 [--bias-grid]
    [--copies 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from knunu.config import load_config
from knunu.mva.bdt import KFoldBDT
from knunu.mva.eta import EtaTransform
from knunu.mva.train import MODEL_FILES
from knunu.simulation.detector import DetectorConfig, simulate_detector
from knunu.simulation.generators import (
    CHARM_HADRONS,
    K0,
    DecayBias,
    Generator,
    Particles,
    boosted_fraction,
)
from knunu.simulation.kinematics import ON_RESONANCE
from knunu.simulation.production import copy_class, prefilter_mask
from knunu.simulation.reconstruction import ita_variables


def select(event: dict, cand: dict, offsets: np.ndarray, cuts: dict) -> tuple[np.ndarray, dict]:
    """The processors' kaon choice and basic selection on in-memory columns."""
    good = (
        (cand["K_kaonID"] > cuts["kaon_id_min"])
        & (np.abs(cand["K_dz"]) < cuts["dz_max_cm"])
        & (cand["K_dr"] < cuts["dr_max_cm"])
    )
    q2 = np.where(good, cand["K_q2rec"], np.inf)
    n = len(offsets) - 1
    best = np.full(n, -1)
    counts = np.diff(offsets)
    for i in np.flatnonzero(counts):
        seg = q2[offsets[i] : offsets[i + 1]]
        j = int(np.argmin(seg))
        if np.isfinite(seg[j]):
            best[i] = offsets[i] + j
    lo, hi = cuts["n_tracks"]
    t_lo, t_hi = cuts["theta_miss_deg"]
    passed = (
        (best >= 0)
        & (event["nTracks"] >= lo)
        & (event["nTracks"] <= hi)
        & (event["E_tot"] > cuts["e_tot_min"])
        & (event["theta_miss"] > t_lo)
        & (event["theta_miss"] < t_hi)
    )
    rows = np.flatnonzero(passed)
    cols = {k: v[rows] for k, v in event.items()}
    cols |= {k: v[best[rows]] for k, v in cand.items()}
    return rows, cols


def truth_flags(parts: Particles) -> dict[str, np.ndarray]:
    """Per event: holds an antineutron, a neutron, a K_L, a neutrino."""
    event = parts.event_index()

    def has(mask: np.ndarray) -> np.ndarray:
        return np.bincount(event[mask], minlength=parts.n_events) > 0

    return {
        "nbar": has(parts.pdg == -2112),
        "n": has(parts.pdg == 2112),
        "K_L": has(parts.pdg == 130),
        "nu": has(np.isin(np.abs(parts.pdg), (12, 14, 16))),
    }


GRID = (1.0, 2.0, 3.0, 5.0)


def bias_gains(
    counts: dict[int, np.ndarray], fractions: dict[int, float], selected: np.ndarray
) -> list[tuple[float, float, float]]:
    """(semileptonic scale, K_L scale, effective-event gain) on ``selected`` unbiased events."""
    out = []
    for s_sl in GRID:
        for s_kl in GRID:
            bias = DecayBias(semileptonic=s_sl, k_long=s_kl)
            log_w = np.zeros(len(selected))
            for species, n in counts.items():
                w_in, w_out = bias.factors(fractions[species], species)
                log_w += n[selected, 0] * np.log(w_in) + n[selected, 1] * np.log(w_out)
            out.append((s_sl, s_kl, 1.0 / float(np.exp(log_w).mean())))
    return out


class _Scorer:
    """Detector, ITA variables, selection and the run's BDTs on one copy of the events."""

    def __init__(self, run: Path, cfg: dict) -> None:
        models = run / "models"
        self.bdt1 = KFoldBDT.load(models / MODEL_FILES["bdt1"])
        self.bdt2 = KFoldBDT.load(models / MODEL_FILES["bdt2"])
        self.eta_t = EtaTransform.load(models / MODEL_FILES["eta"])
        self.cfg = cfg
        self.det = DetectorConfig()
        self.copy_cpu = 0.0

    def __call__(self, parts: Particles, rng: np.random.Generator, seed: int) -> dict:
        """Per region, the generated events (rows) the copy puts there."""
        t0 = time.process_time()
        seen = simulate_detector(parts, ON_RESONANCE, self.det, rng)
        kept = prefilter_mask(seen).mean()
        t1 = time.process_time()
        event, cand = ita_variables(seen)
        # production reconstructs only what the prefilter keeps
        self.copy_cpu += t1 - t0 + kept * (time.process_time() - t1)
        rows, cols = select(event, cand, seen.tracks.offsets, self.cfg["selection"])
        run = np.full(len(rows), seed)
        p1 = self.bdt1.predict(cols, run, rows) > self.cfg["bdt1_min"]
        eta = np.full(len(rows), -1.0)
        sub = {k: v[p1] for k, v in cols.items()}
        eta[p1] = self.eta_t(self.bdt2.predict(sub, run[p1], rows[p1]))
        return {"BDT1": rows[p1], "eta>0.8": rows[eta > 0.8], "eta>0.92": rows[eta > 0.92]}


#: Generator-level classes that could get the copies alone: (hardest charged kaon's p* above,
#: invisible energy above), GeV.
CLASSES = ((0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (1.2, 1.0), (1.5, 1.0))


def class_gain(w: np.ndarray, k: np.ndarray, cls: np.ndarray, copies: int) -> float:
    """Copies for the events of a generator-level class only (the others keep one copy):
    effective events over one copy's; for every event, N sum(w^2 k) / sum(w^2 k^2).

    >>> every = np.ones(3, dtype=bool)
    >>> class_gain(np.ones(3), np.array([4, 0, 4]), every, 4)  # the event decides: no gain
    1.0
    >>> class_gain(np.ones(4), np.array([1, 1, 1, 1]), np.ones(4, dtype=bool), 4)  # detector: N
    4.0
    >>> class_gain(np.ones(2), np.array([1, 1]), np.array([True, False]), 4)
    1.6
    """
    w2 = w**2
    one = (w2 * k).sum() / copies
    var = (w2 * k**2)[cls].sum() / copies**2 + (w2 * k)[~cls].sum() / copies
    return float(one / max(var, 1e-300))


def gen_classes(parts: Particles) -> dict[tuple[float, float], np.ndarray]:
    """Per class of :data:`CLASSES`, the generated events in it (production's copy class)."""
    return {(a, b): copy_class(parts, a, b) for a, b in CLASSES}


def copies_report(
    score: _Scorer, parts: Particles, weight: np.ndarray, copies: int, seed: int, gen_cpu: float
) -> None:
    """Print each region's gain from ``copies`` detector copies and the CPU it costs."""
    rng = np.random.default_rng([seed, 1])
    k = {}
    score.copy_cpu = 0.0
    for _ in range(copies):
        for name, rows in score(parts, rng, seed).items():
            k.setdefault(name, np.zeros(parts.n_events, dtype=np.int64))
            np.add.at(k[name], rows, 1)
    n = parts.n_events
    copy_us = 1e6 * score.copy_cpu / copies / n
    gen_us = 1e6 * gen_cpu / n

    def cost(frac: float) -> float:  # copies for a share frac of the events, over one copy
        return (gen_us + (1 + frac * (copies - 1)) * copy_us) / (gen_us + copy_us)

    print(
        f"  copies: generation {gen_us:.1f} us/event, a copy (detector, prefilter,"
        f" reconstruction of the kept) {copy_us:.1f} us/event: {copies} copies cost {cost(1):.2f}x"
    )
    classes = gen_classes(parts)
    shares = ", ".join(f"K>{a:g},Einv>{b:g}: {c.mean():.3f}" for (a, b), c in classes.items())
    print(f"  generated events in each class: {shares}")
    for name, kk in k.items():
        hit = kk > 0
        gain = class_gain(weight[hit], kk[hit], np.ones(hit.sum(), dtype=bool), copies)
        by_class = ", ".join(
            f"{a:g},{b:g}: holds {c[hit].mean():.2f}, per CPU-s "
            f"{class_gain(weight[hit], kk[hit], c[hit], copies) / cost(c.mean()):.2f}x"
            for (a, b), c in classes.items()
        )
        print(f"  {name:9s} copies for a class only: {by_class}")
        print(
            f"  {name:9s} {hit.sum()} events in {kk.sum()} copies: {copies} copies give"
            f" {gain:.2f}x the effective events, {gain / cost(1):.2f}x per CPU-second"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/default")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--samples", nargs="+", default=["uubar", "ssbar", "ccbar"])
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument(
        "--enhance", default="", help="Pythia EnhancedSplittings:List, e.g. {fsr:Q2QG=4}"
    )
    parser.add_argument("--bias-grid", action="store_true")
    parser.add_argument("--copies", type=int, default=0, help="detector copies per event")
    args = parser.parse_args()
    cfg = load_config(None)["ita"]
    score = _Scorer(Path(args.run), cfg)  # the run's models, loaded once
    bdt1, bdt2, eta_t, det = score.bdt1, score.bdt2, score.eta_t, score.det
    for sample in args.samples:
        t0 = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        extra = (
            ("Enhancements:doEnhance = on", f"EnhancedSplittings:List = {args.enhance}")
            if args.enhance
            else ()
        )
        gen = Generator(sample, seed=args.seed, extra=extra)
        species = (*CHARM_HADRONS, K0)
        fractions = {k: boosted_fraction(gen.pythia.particleData, k) for k in species}
        g0 = time.process_time()
        parts, weight, counts = gen.generate_counted(args.events, species)
        gen_cpu = time.process_time() - g0
        if args.copies:
            copies_report(score, parts, weight, args.copies, args.seed, gen_cpu)
            continue
        seen = simulate_detector(parts, ON_RESONANCE, det, rng)
        event, cand = ita_variables(seen)
        rows, cols = select(event, cand, seen.tracks.offsets, cfg["selection"])
        run = np.full(len(rows), args.seed)
        s1 = bdt1.predict(cols, run, rows)
        p1 = s1 > cfg["bdt1_min"]
        eta = np.full(len(rows), -1.0)
        sub = {k: v[p1] for k, v in cols.items()}
        eta[p1] = eta_t(bdt2.predict(sub, run[p1], rows[p1]))
        flags = truth_flags(parts)
        print(f"{sample}: {args.events} generated, {time.perf_counter() - t0:.0f} s")
        print("  all events: " + ", ".join(f"{k} {v.mean():.3f}" for k, v in flags.items()))
        print(f"  weights: mean {weight.mean():.3f}, max {weight.max():.2f}")
        for name, mask in (("BDT1", p1), ("eta>0.8", eta > 0.8), ("eta>0.92", eta > 0.92)):
            sel = rows[mask]
            w = weight[sel]
            n_eff = w.sum() ** 2 / max((w**2).sum(), 1e-300)
            print(f"  {name:9s} weighted {w.sum() / weight.sum():.2e}/gen, effective {n_eff:.1f}")
            frac = ", ".join(f"{k} {v[sel].mean():.2f}" for k, v in flags.items() if len(sel))
            print(f"  {name:9s} {len(sel):6d} ({len(sel) / args.events:.2e}/gen)  {frac}")
            if len(sel):
                n_kl = counts[K0][sel, 0]
                n_sl = sum(counts[k][sel, 0] for k in CHARM_HADRONS)
                print(
                    f"  {name:9s} K0->K_L {np.mean(n_kl > 0):.2f} (mean {n_kl.mean():.2f}),"
                    f" semileptonic charm {np.mean(n_sl > 0):.2f} (mean {n_sl.mean():.2f})"
                )
            if args.bias_grid and len(sel) and not args.enhance:
                gains = bias_gains(counts, fractions, sel)
                best = max(gains, key=lambda g: g[2])
                table = " ".join(f"{a:g}/{b:g}:{g:.2f}" for a, b, g in gains)
                print(f"  {name:9s} gain (sl/kl:gain) {table}; best {best}")


if __name__ == "__main__":
    main()
