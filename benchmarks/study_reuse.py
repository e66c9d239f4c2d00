"""Library-entry reuse in the signal regions' B Bbar MC: do the MC errors need to know it?

B Bbar events pair entries of single-B decay libraries, and the targeting draws the entries
with a hard kaon (the ITA) or a lone kaon (the HTA) hundreds of times. Events that share an
entry are not independent, so sum w^2 underestimates a template's MC variance. For the B Bbar
MC of a finished run (``mcB1Entry``/``mcB2Entry`` truth, stop 28 on), this selects and scores
the ITA signal region (eta(BDT2) > 0.92, nominal corrections) and the HTA's (eta(BDTh) > 0.4)
as the processors do and reports the variance over sum w^2 when the events are grouped by
each B's entry, ``sum_g (sum_{events in g} w)^2 / sum w^2``, and the two-entry estimate
(a sum over pairs of two random entries: grouped by the first + grouped by the second - 1).

Usage: python benchmarks/study_reuse.py --run runs/default [-c configs/measurement.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import uproot
from coffea.nanoevents import NanoEventsFactory

from knunu.config import load_config
from knunu.mva.corrections import corrected_hta_inputs, corrected_inputs, nominal_mc
from knunu.processors.hta import HTAProcessor, load_hta_models, select_hta
from knunu.processors.ita import SR_ETA, ITAProcessor, load_models
from knunu.processors.run import Catalogue
from knunu.processors.schema import Belle2Schema
from knunu.processors.selection import select

ENTRIES = ("mcB1Entry", "mcB2Entry")


def events(path: str, tree: str, dataset: str) -> Any:
    """One whole tree as NanoEvents, as the runner reads a chunk."""
    rf = uproot.open(path)
    n = rf[tree].num_entries
    meta = {"dataset": dataset, "filename": path, "treename": tree, "entrystart": 0}
    meta |= {"entrystop": n, "fileuuid": str(rf.file.uuid)}
    return NanoEventsFactory.from_root(
        file=rf, treepath=tree, schemaclass=Belle2Schema, metadata=meta, mode="virtual",
        entry_start=0, entry_stop=n,
    ).events()  # fmt: skip


def reuse(w: np.ndarray, first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Naive effective events and the variance ratios of the groupings.

    >>> r = reuse(np.ones(4), np.array([1, 1, 2, 3]), np.array([5, 6, 7, 8]))
    >>> r["first"], r["second"], r["pairs"]
    (1.5, 1.0, 1.5)
    """
    naive = float((w**2).sum())

    def grouped(key: np.ndarray) -> float:
        _, inverse = np.unique(key, return_inverse=True)
        return float((np.bincount(inverse, weights=w) ** 2).sum()) / naive

    a, b = grouped(first), grouped(second)
    return {"events": len(w), "effective": float(w.sum()) ** 2 / naive, "first": a,
            "second": b, "pairs": a + b - 1.0}  # fmt: skip


def signal_region_rows(
    run: Path, cfg: dict[str, Any], ita_eta: float = SR_ETA
) -> dict[tuple[str, str], np.ndarray]:
    """The B Bbar MC's signal-region events of a run: (weight, first entry, second entry).

    Keyed by (dataset, region), region ``ITA`` (eta(BDT2) > ``ita_eta``, the signal region's
    0.92 unless given: 0.8 is where the factorised templates take the B Bbar) or ``HTA``
    (eta(BDTh) > 0.4), selected and scored as the processors do with nominal corrections; the
    ITA weight includes the BDTc factor (1 for B Bbar), the HTA's the tag probability.
    """
    models_dir = str(run / "models")
    catalogue = Catalogue.load(run / "ntuples" / "catalogue.json").datasets
    ita, hta = ITAProcessor(models_dir, cfg["ita"]), HTAProcessor(models_dir, cfg["hta"])
    models, hta_models = load_models(models_dir), load_hta_models(models_dir)
    out = {}
    for dataset in ("charged", "mixed"):
        rows: dict[str, list[np.ndarray]] = {"ITA": [], "HTA": []}
        for record in catalogue[dataset]["files"]:
            path = str(record["path"])
            ev = events(path, "ita", dataset)
            cols = dict(select(ev, cfg["ita"]["selection"], (*ita.names, *ENTRIES)).columns)
            if ENTRIES[0] not in cols:
                raise SystemExit(f"{path}: no {ENTRIES} truth (a production before stop 28)")
            w, cols = nominal_mc(cols, cfg["ita"]["corrections"], corrected_inputs)
            passed, eta, bdtc = ita._eta_weight(models, ita._scores(models, cols, False))
            sr = passed & (eta > ita_eta)
            rows["ITA"].append(np.stack([w * bdtc, *(cols[e] for e in ENTRIES)])[:, sr])
            ev = events(path, "hta", dataset)
            cols = dict(select_hta(ev, cfg["hta"]["selection"], (*hta.names, *ENTRIES)).columns)
            if not len(cols["__event__"]):
                continue
            w, cols = nominal_mc(cols, cfg["hta"]["corrections"], corrected_hta_inputs)
            score = hta_models.bdth.score(cols)
            sr = hta_models.eta(score) > cfg["hta"]["eta_edges"][0]
            rows["HTA"].append(np.stack([w, *(cols[e] for e in ENTRIES)])[:, sr])
        for region, parts in rows.items():
            out[(dataset, region)] = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("-c", "--config", help="the run's analysis YAML")
    args = parser.parse_args()
    cfg = load_config(args.config) if args.config else load_config()
    for (dataset, region), table in signal_region_rows(args.run, cfg).items():
        if not table.shape[1]:
            print(f"{dataset:8s} {region} signal region: no events")
            continue
        r = reuse(table[0], table[1].astype(np.int64), table[2].astype(np.int64))
        print(
            f"{dataset:8s} {region} signal region: {r['events']} events, "
            f"{r['effective']:.1f} effective (sum w^2); variance / sum w^2 grouped by the "
            f"first B's entry {r['first']:.2f}, by the second's {r['second']:.2f}, "
            f"two-entry estimate {r['pairs']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
