"""Another B Bbar targeting, judged on a finished run's signal-region events, without new MC.

Each B Bbar pair carries its untargeted weight over the proposal's density ratio ``g``
(:meth:`~knunu.simulation.bdecays.Mixture.density`), so the same pairs drawn from another
proposal ``g'`` would weigh ``w' = w g / g'``. For N pairs made with ``g'``, the expected
sum of squared weights in a signal region is N E_g'[w'^2] = N E_g[w w']: over the run's own
signal-region events, ``sum w w'`` estimates it, and ``sum w^2 / sum w w'`` is the factor by
which the effective events (sum w)^2 / sum w^2 grow for the same number of generated pairs
(the production's CPU per pair does not depend on the proposal; the processors' does, with
the events that pass the preselection: ``benchmarks/bench_targeting.py`` measures per
CPU-second). Consistent wherever the run's proposal covers the other's (its untargeted share
makes it so); its own MC error is that of the heavy events, so a variant is believed only
when runs with different seeds agree.

Signal regions and weights as in ``benchmarks/study_reuse.py``; the run's targeting is read
from its manifest. The run must be made by this code's production (stop 32 on: B0B0bar pairs
without the HTA share), with the kaon-side proposal, and hold one decay library.

``--ita-eta 0.8`` judges the ITA above eta 0.8 instead of the signal region's 0.92: the
factorised templates take the B Bbar from there (stop 46: ``kaon_misid_neutral`` and
``kaon_soft`` were chosen on it).

Usage: python benchmarks/study_targeting.py --run runs/default [--run DIR ...]
    [--variant kaon_share=0.7,hta_share=0.2 ...] [--ita-eta 0.8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from _results import write_results
from study_reuse import signal_region_rows

from knunu.processors.ita import SR_ETA
from knunu.simulation.production import Targeting, load_mixture, pair_proposal

#: Variants measured by default, around the config's kaon 50 % / HTA 30 % / untargeted 20 % with
#: the HTA's photon tilt 3 (stop 35): one share moved against another, the tilt moved.
VARIANTS = (
    "untargeted",
    "kaon_share=0.6,hta_share=0.2",
    "kaon_share=0.4,hta_share=0.4",
    "kaon_share=0.5,hta_share=0.2",
    "hta_photon_slope=0",
    "hta_photon_slope=2",
    "hta_photon_slope=4",
)


def variant(base: Targeting, text: str) -> Targeting | None:
    """``key=value,...`` over the run's targeting; ``untargeted``: None.

    >>> variant(Targeting(kaon_p_gev=1.1), "hta_share=0.05").hta_share
    0.05
    """
    if text == "untargeted":
        return None
    fields = {k: float(v) for k, v in (item.split("=") for item in text.split(","))}
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def gains(
    libraries: str, table: np.ndarray, neutral: bool, run: Targeting, others: list[str]
) -> dict[str, float]:
    """sum w^2 / sum w w': the effective events' factor under each other targeting.

    Args:
        libraries: The run's decay-library folder.
        table: Weights, first and second library entries of the signal-region pairs.
        neutral: B0B0bar pairs.
        run: The targeting the pairs were drawn with.
        others: Variants (:func:`variant`) of ``run``.
    """
    mix = load_mixture(libraries)
    w, e1, e2 = table[0], table[1].astype(np.int64), table[2].astype(np.int64)
    first = mix.species_of(e1)

    def density(aim: Targeting | None) -> np.ndarray:
        if aim is None:
            return np.ones(len(w))
        factor, share, tag = pair_proposal(libraries, aim, neutral)
        return mix.density(first, e1, e2, factor, share, False, tag)

    g = density(run)
    return {text: float((w**2).sum() / (w * w * g / density(variant(run, text))).sum())
            for text in others}  # fmt: skip


def _libraries(run: Path) -> str:
    found = sorted((run / "ntuples" / "libraries").iterdir())
    if len(found) != 1:
        raise SystemExit(f"{run}: {len(found)} decay libraries (one expected): {found}")
    return str(found[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE,...")
    parser.add_argument("--ita-eta", type=float, default=SR_ETA, help="the ITA region's eta cut")
    args = parser.parse_args()
    texts = args.variant or list(VARIANTS)
    results = []
    for run in args.run:
        manifest = json.loads((run / "manifest.json").read_text())
        base = Targeting(**manifest["config"]["simulation"]["targeting"]["bbbar"])
        if base.kaon_p_gev <= 0:
            raise SystemExit(f"{run}: made without the kaon-side proposal (kaon_p_gev 0)")
        libraries = _libraries(run)
        regions = signal_region_rows(run, manifest["config"], args.ita_eta)
        for (dataset, region), table in regions.items():
            if not table.shape[1]:
                continue
            w = table[0]
            row = {"run": str(run), "seed": manifest["seed"], "dataset": dataset,
                   "region": region, "ita_eta": args.ita_eta, "events": int(table.shape[1]),
                   "effective": float(w.sum() ** 2 / (w**2).sum()),
                   "gain": gains(libraries, table, dataset == "mixed", base, texts)}  # fmt: skip
            results.append(row)
            print(
                f"seed {row['seed']} {dataset:8s} {region}: {row['events']} events, "
                f"{row['effective']:.1f} effective; effective events for the same pairs, "
                "relative to this run's targeting: "
                + ", ".join(f"{k} {v:.2f}x" for k, v in row["gain"].items()),
                flush=True,
            )
    write_results("study_targeting", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
