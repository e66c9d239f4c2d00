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

Usage: python benchmarks/study_continuum.py --run runs/default --events 200000 [--bias-grid]
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
    args = parser.parse_args()
    cfg = load_config(None)["ita"]
    models = Path(args.run) / "models"
    bdt1 = KFoldBDT.load(models / MODEL_FILES["bdt1"])
    bdt2 = KFoldBDT.load(models / MODEL_FILES["bdt2"])
    eta_t = EtaTransform.load(models / MODEL_FILES["eta"])
    det = DetectorConfig()
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
        parts, weight, counts = gen.generate_counted(args.events, species)
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
