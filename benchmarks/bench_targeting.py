"""Targeted MC: effective signal-region events per CPU-second, side by side.

The same B Bbar sample (same libraries, same seeds, same number of events) made untargeted
(``bbbar_bias = 0``, today's production) and targeted at the signal regions (library entries
drawn with exact weights: :class:`~knunu.simulation.production.Targeting`), each produced and
run through the ITA and HTA processors with a run's models in this process (one core).
Reported per variant: CPU seconds (production + processors), the weighted signal-region
yield (it must agree between variants within its MC error: the weights are exact), the
effective signal-region events (sum w)^2 / sum w^2 and their ratio per CPU-second to the
untargeted sample, for the ITA signal region (eta > 0.94), the ITA's region above eta 0.8 (the
factorised templates' statistics) and the HTA's (eta(BDTh) > 0.4). The MC errors are those the
histogram file gets (:func:`~knunu.processors.reuse.with_reuse`): shared library entries and
detector copies of one event count as correlated.

Continuum samples (``--samples ssbar ccbar``) take variants given with ``--variant``, e.g. the
decay bias alone against the decay bias with detector copies (:attr:`Targeting.copies`).

Needs a finished run directory (``--run runs/default`` after `make analysis`). Writes
benchmarks/results/targeting.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _results import write_results

from knunu.config import load_config
from knunu.processors import run as runner
from knunu.processors.hta import HTAProcessor
from knunu.processors.ita import ITAProcessor
from knunu.processors.reuse import with_reuse
from knunu.samples import load_samples
from knunu.simulation.production import FileTask, Targeting, produce_file


def _effective(total: float, var: float) -> float:
    return total**2 / var if var > 0 else 0.0


def _libraries(run: Path) -> str:
    found = sorted((run / "ntuples" / "libraries").iterdir())
    if not found:
        raise SystemExit(f"{run}: no decay libraries")
    return str(found[-1])


def one(run: Path, sample: str, aim: Targeting | None, events: int, seed: int, tmp: Path) -> dict:
    """Produce and process one B Bbar file; CPU seconds and signal-region statistics."""
    config = load_config()
    path = tmp / f"{sample}_{abs(hash(aim))}.root"
    task = FileTask(
        sample=sample,
        n_events=events,
        seed=seed,
        path=str(path),
        libraries=_libraries(run) if load_samples()[sample].kind != "continuum" else None,
        tag_boost=float(config["simulation"]["hta_tag_boost"]),
        targeting=aim,
    )
    cpu = time.process_time()
    record = produce_file(task)
    produced = time.process_time() - cpu
    catalogue = runner.Catalogue(
        tmp / "catalogue.json",
        {sample: {"files": [{"path": str(path), "entries_ita": record.entries_ita,
                             "entries_hta": record.entries_hta}]}},
    )  # fmt: skip
    cpu = time.process_time()
    out, _ = runner.run(
        catalogue, [sample], ITAProcessor(str(run / "models"), config["ita"]), "ita", None, 200_000
    )
    hta, _ = runner.run(
        catalogue, [sample], HTAProcessor(str(run / "models"), config["hta"]), "hta", None, 200_000
    )
    processed = time.process_time() - cpu
    res = out[sample]
    h = with_reuse(res["ita"][{"variation": "nominal"}], res.get("ita_reuse"))
    values, variances = h.values()[1:], h.variances()[1:]  # eta > 0.94: the SR proper
    total, var = float(values.sum()), float(variances.sum())
    loose = with_reuse(res["ita_loose"][{"variation": "nominal"}], res.get("ita_loose_reuse"))
    above = loose.axes["eta"].index(0.8)  # eta > 0.8: what the factorised templates use
    l_total = float(loose.values()[above:].sum())
    l_var = float(loose.variances()[above:].sum())
    g = with_reuse(hta[sample]["hta"][{"variation": "nominal"}], hta[sample].get("hta_reuse"))
    hta_total, hta_var = float(g.values().sum()), float(g.variances().sum())  # eta(BDTh) > 0.4
    return {
        "sample": sample,
        "targeting": None if aim is None else aim.__dict__,
        "events": events,
        "sum_weights": record.sum_weights,
        "cpu_produce": produced,
        "cpu_process": processed,
        "sr_yield": total,
        "sr_yield_error": var**0.5,
        "sr_effective": _effective(total, var),
        "sr_raw": int(out[sample]["cutflow_unweighted"].values()[-1]),
        "loose_yield": l_total,
        "loose_effective": _effective(l_total, l_var),
        "hta_yield": hta_total,
        "hta_yield_error": hta_var**0.5,
        "hta_effective": _effective(hta_total, hta_var),
        "hta_raw": int(hta[sample]["cutflow_unweighted"].values()[-1]),
    }


#: Targeting variants compared with the untargeted production (None).
VARIANTS: dict[str, Targeting | None] = {
    "untargeted": None,
    # both B tilted by their invisible energy (configs/analysis.yaml until stop 26)
    "energy": Targeting(slope=2.0, cap_gev=2.5, mix=0.5),
    # one B per pair with a hard kaon (configs/analysis.yaml now)
    "kaon": Targeting(
        slope=1.5, cap_gev=3.5, mix=0.5, kaon_p_gev=1.1, kaon_share=0.9, kaon_misid=0.02
    ),
    # and a share of the pairs for the HTA: a kaon among few charged particles next to a
    # fully visible B (configs/analysis.yaml from stop 28)
    "kaon+hta": Targeting(
        slope=1.5,
        cap_gev=3.5,
        mix=0.5,
        kaon_p_gev=1.1,
        kaon_share=0.8,
        kaon_misid=0.02,
        hta_share=0.1,
        hta_slope=1.5,
    ),
}


def _variant(text: str) -> Targeting:
    """``key=value,...`` of :class:`Targeting`'s fields."""
    fields: dict[str, float | int] = {
        k: float(v) for k, v in (item.split("=") for item in text.split(","))
    }
    for key in ("sides", "copies"):
        if key in fields:
            fields[key] = int(fields[key])
    return Targeting(**fields)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/default"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--samples", nargs="+", default=["charged", "mixed"])
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="an extra variant: Targeting fields, e.g. kaon_p_gev=1.3,slope=0 (repeatable)",
    )
    args = parser.parse_args()
    variants = {k: VARIANTS[k] for k in ("untargeted", *args.variants)}
    variants |= {text: _variant(text) for text in args.variant}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sample in args.samples:
            one(args.run, sample, None, 2000, 1, Path(tmp))  # warm-up: libraries, models
            for name, aim in variants.items():
                rows.append(one(args.run, sample, aim, args.events, 4242, Path(tmp)))
                r = rows[-1]
                r["variant"] = name
                print(
                    f"{sample:8s} {name:22s}: cpu {r['cpu_produce']:6.1f} + "
                    f"{r['cpu_process']:5.1f} s, sum w {r['sum_weights']:9.0f}, SR yield "
                    f"{r['sr_yield']:7.2f} +- {r['sr_yield_error']:5.2f}, effective "
                    f"{r['sr_effective']:7.1f} (raw {r['sr_raw']}); eta > 0.8 "
                    f"{r['loose_yield']:7.2f}, effective {r['loose_effective']:7.1f}; HTA SR yield "
                    f"{r['hta_yield']:7.2f} +- {r['hta_yield_error']:5.2f}, effective "
                    f"{r['hta_effective']:7.1f} (raw {r['hta_raw']})",
                    flush=True,
                )
    for sample in args.samples:
        base = next(r for r in rows if r["sample"] == sample and r["variant"] == "untargeted")
        rate0 = base["sr_effective"] / (base["cpu_produce"] + base["cpu_process"])
        for r in rows:
            if r["sample"] != sample:
                continue
            rate = r["sr_effective"] / (r["cpu_produce"] + r["cpu_process"])
            r["effective_per_cpu_ratio"] = rate / rate0 if rate0 > 0 else float("nan")
            cpu = r["cpu_produce"] + r["cpu_process"]
            loose0 = base["loose_effective"] / (base["cpu_produce"] + base["cpu_process"])
            r["loose_effective_per_cpu_ratio"] = r["loose_effective"] / cpu / loose0
            hta_rate0 = base["hta_effective"] / (base["cpu_produce"] + base["cpu_process"])
            r["hta_effective_per_cpu_ratio"] = (
                r["hta_effective"] / cpu / hta_rate0 if hta_rate0 > 0 else float("nan")
            )
            print(
                f"{sample:8s} {r['variant']:22s}: effective SR events per CPU-second "
                f"{rate:.3f} ({r['effective_per_cpu_ratio']:.1f}x untargeted); SR yield "
                f"{r['sr_yield']:.2f} +- {r['sr_yield_error']:.2f} per sum of weights "
                f"{r['sum_weights']:.0f}; eta > 0.8 {r['loose_effective_per_cpu_ratio']:.2f}x; "
                f"HTA {r['hta_effective_per_cpu_ratio']:.1f}x"
            )
    write_results("targeting", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
