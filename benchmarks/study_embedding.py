"""Why nature's signal efficiency differs from the corrected MC's (the embedding's data/MC).

Generates signal events (B+ -> K+ nu nubar against a generic B from a run's decay libraries)
once, passes them through the MC's detector and through nature's (``simulation.nature``: K_L
ECL efficiency and hadronic energy scale), reconstructs the ITA variables, selects the kaon
candidate as the processors do and scores with a run's models. The MC gets the processors'
nominal corrections (:func:`knunu.mva.corrections.corrected_inputs`; B(D -> K_L X) is a weight
on the other B's decays, the same in both, and left out). Reported: the ITA signal-region
efficiency (eta > 0.92) of nature's detector, the MC's corrected and uncorrected, and per
BDT2 input the mean shift nature - corrected MC on the events both select after BDT1, in
units of the input's spread; and the mean of the B(D -> K_L X) correction's weight over the
generated signal (what the correction added to the signal before stop 55).

Measured (stop 55, the default run's models, 60,000 events): nature 0.0731 +- 0.0012, the
corrected MC 0.0742, uncorrected 0.0740 (3,169 events in both signal regions, 825 and 861 in
one); no input moves by more than 0.011 of its spread. The detector's corrections are not
why the embedding's data/MC was 0.90-0.96: the correction's weight averaged 1.080.

Usage: python benchmarks/study_embedding.py --run runs/default --libraries DIR --events 100000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from study_continuum import select

from knunu.config import load_config
from knunu.mva.bdt import KFoldBDT
from knunu.mva.corrections import corrected_inputs
from knunu.mva.eta import EtaTransform
from knunu.mva.train import MODEL_FILES
from knunu.simulation.detector import DetectorConfig, simulate_detector
from knunu.simulation.kinematics import ON_RESONANCE
from knunu.simulation.production import FileTask, Nature, generate_events
from knunu.simulation.reconstruction import ita_truth, ita_variables


def score(run: Path, cfg: dict, cols: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BDT1 pass and eta (-1 where BDT1 fails) of the selected events."""
    models = run / "models"
    bdt1 = KFoldBDT.load(models / MODEL_FILES["bdt1"])
    bdt2 = KFoldBDT.load(models / MODEL_FILES["bdt2"])
    eta_t = EtaTransform.load(models / MODEL_FILES["eta"])
    seed = np.full(len(rows), 1)
    p1 = bdt1.predict(cols, seed, rows) > cfg["bdt1_min"]
    eta = np.full(len(rows), -1.0)
    sub = {k: v[p1] for k, v in cols.items()}
    eta[p1] = eta_t(bdt2.predict(sub, seed[p1], rows[p1]))
    return p1, eta


def variant(parts, total, det: DetectorConfig, seed: int, cfg: dict, correct: dict | None):
    """Selected rows and their columns after the detector ``det`` (corrected when asked)."""
    seen = simulate_detector(parts, ON_RESONANCE, det, np.random.default_rng(seed), total)
    event, cand = ita_variables(seen)
    truth, _ = ita_truth(seen)
    event |= truth
    n = len(event["nTracks"])
    event |= {"__run__": np.full(n, 1, np.int32), "__event__": np.arange(n, dtype=np.int64)}
    rows, cols = select(event, cand, seen.tracks.offsets, cfg["selection"])
    if correct is not None:
        cols = corrected_inputs(cols, correct)
    return rows, cols


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--libraries", required=True)
    ap.add_argument("--events", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    config = load_config(None)
    ita = config["ita"]
    nat = config["simulation"]["nature"]
    task = FileTask("signal", args.events, args.seed, "/dev/null", libraries=args.libraries)
    batch = generate_events(task, np.random.default_rng(args.seed))
    nominal = DetectorConfig()
    nature = Nature(
        kl_efficiency_scale=nat["kl_efficiency_scale"],
        hadronic_energy_scale=nat["hadronic_energy_scale"],
    ).detector(nominal)
    # MC weight (the signal's q2 generation) x B(D -> K_L X) on the other B, the same decays
    # in every variant
    w_all = batch.truth["weight"] * ita["corrections"]["d_to_kl_scale"] ** batch.truth["mcDtoKL"]
    n = w_all.sum()
    print(
        f"B(D -> K_L X) x{ita['corrections']['d_to_kl_scale']}: mean of its weight over the "
        f"generated signal {n / batch.truth['weight'].sum():.4f} (efficiencies below are over "
        "the corrected weights, i.e. with the correction keeping the number of events)"
    )
    out = {}
    for name, det, corr in (
        ("nature", nature, None),
        ("mc corrected", nominal, ita["corrections"]),
        ("mc uncorrected", nominal, None),
    ):
        rows, cols = variant(batch.parts, batch.total, det, args.seed + 1, ita, corr)
        p1, eta = score(args.run, ita, cols, rows)
        out[name] = (rows, cols, p1, eta)
        w = w_all[rows]
        sr = eta > 0.92
        print(
            f"{name:15s} selected {w.sum() / n:.4f}  BDT1 {w[p1].sum() / n:.4f}  "
            f"eta>0.8 {w[eta > 0.8].sum() / n:.4f}  SR {w[sr].sum() / n:.5f} "
            f"+- {np.sqrt((w[sr] ** 2).sum()) / n:.5f}"
        )
    r_n, c_n, p_n, e_n = out["nature"]
    r_m, c_m, p_m, e_m = out["mc corrected"]
    sr_n = set(r_n[e_n > 0.92].tolist())
    sr_m = set(r_m[e_m > 0.92].tolist())
    print(f"SR both {len(sr_n & sr_m)}, nature only {len(sr_n - sr_m)}, MC only {len(sr_m - sr_n)}")
    common, i_n, i_m = np.intersect1d(r_n[p_n], r_m[p_m], return_indices=True)
    feats = KFoldBDT.load(args.run / "models" / MODEL_FILES["bdt2"]).features
    cn = {k: v[p_n] for k, v in c_n.items()}
    cm = {k: v[p_m] for k, v in c_m.items()}
    rows = []
    for f in feats:
        a, b = np.asarray(cn[f], float)[i_n], np.asarray(cm[f], float)[i_m]
        spread = np.std(b) or 1.0
        diff = (a - b) / spread
        rows.append((abs(np.mean(diff)), f, np.mean(diff), np.std(diff)))
    print(f"{len(common)} events pass BDT1 in both; BDT2 inputs, nature - corrected MC:")
    for _, f, mean, sd in sorted(rows, reverse=True)[:20]:
        print(f"  {f:22s} mean {mean:+.3f} sd, spread of the difference {sd:.3f} sd")


if __name__ == "__main__":
    main()
