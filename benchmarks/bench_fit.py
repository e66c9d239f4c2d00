"""Fit-engine benchmark on the published Belle II likelihood (232 parameters, 2 cores).

Side by side in one process, times after compilation:

- knunu (``dense``): the dense HistFactory arrays, MLE + Hesse, q0, impacts and
  goodness-of-fit toys in vmapped batches (``Likelihood.fit_many``);
- knunu on pyhf's graph, the engine before the dense arrays (``engine="pyhf"``, toys and
  impact refits one at a time, impacts with the chord steps it used): "before";
- pyhf 0.7.6 with jax + scipy (its fastest configuration here) and with jax + Minuit (what the
  paper's fits used), MLE fits of the observed data and of toys.

Every knunu figure is printed beside pyhf's own time on this machine so that the ratios carry
across machines. Writes benchmarks/results/fit.json. Run with `make bench`.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyhf
from _results import write_results

from knunu.fits.infer import (
    Likelihood,
    build_model,
    deviance,
    goodness_of_fit,
    impacts,
    significance,
)
from knunu.fits.workspace import load_workspace, published_workspace_path

GOF_TOYS = 1000
BEFORE_TOYS = 100  # the one-by-one engine, scaled to GOF_TOYS
PYHF_TOYS = 5  # pyhf fits of toys, scaled to GOF_TOYS


def timed(func, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - start)
    return best, out


def before_gof(lh, best, n, seed):
    """The goodness-of-fit loop before fit_many: one toy fit at a time."""
    return [deviance(lh, lh.with_data(t).fit(init=best.x).x, t) for t in lh.sample(best.x, n, seed)]


def before_impacts(lh, best, unc):
    """The impacts loop before fit_many: chord steps with the best fit's Fisher matrix."""
    matrix = lh.fisher(best.x)
    out = []
    for i in range(lh.npars):
        if i == lh.poi or i in best.fixed:
            continue
        for sign in (1.0, -1.0):
            value = float(np.clip(best.x[i] + sign * unc.error[i], *lh.bounds[i]))
            out.append(lh.profile(i, value, best.x, curvature=matrix).x[lh.poi])
    return out


def knunu_engine(ws, engine):
    lh = Likelihood.from_workspace(ws, engine=engine)
    first_s, _ = timed(lh.fit)  # includes jit compilation
    fit_s, best = timed(lh.fit, repeat=3)
    hesse_s, unc = timed(lambda: lh.uncertainties(best), repeat=2)
    z_s, z0 = timed(lambda: significance(lh, best, 0.0), repeat=2)
    out = {
        "first_fit_with_compilation_s": first_s,
        "mle_fit_s": fit_s,
        "hesse_s": hesse_s,
        "q0_significance_s": z_s,
        "mu": float(best.x[lh.poi]),
        "mu_err": float(unc.error[lh.poi]),
        "twice_nll": 2 * best.nll,
        "z0": z0,
    }
    if engine == "dense":
        impacts(lh, best, unc)  # compiles the batch kernels
        goodness_of_fit(lh, best, 8, seed=2)
        out["impacts_s"], ranked = timed(lambda: impacts(lh, best, unc).impacts)
        gof_s, gof = timed(lambda: goodness_of_fit(lh, best, GOF_TOYS, seed=1))
        out |= {"n_impacts": len(ranked), "gof_s_per_1000_toys": gof_s * 1000 / GOF_TOYS}
        out |= {"gof_p_value": gof.p_value, "gof_failed_toys": len(gof.failed)}
    else:
        out["impacts_s"], _ = timed(lambda: before_impacts(lh, best, unc))
        gof_s, _ = timed(lambda: before_gof(lh, best, BEFORE_TOYS, seed=1))
        out["gof_s_per_1000_toys"] = gof_s * 1000 / BEFORE_TOYS
    return out, lh, best


def pyhf_fits(ws, optimizer, toys):
    pyhf.set_backend("jax", optimizer)
    model = build_model(ws)  # the model knunu fits (samples clipped at zero)
    data = ws.data(model)
    pyhf.infer.mle.fit(data, model)  # warm-up (jit)
    fit_s, (pars, twice) = timed(
        lambda: pyhf.infer.mle.fit(data, model, return_fitted_val=True), repeat=2
    )
    failed = []

    def fit_toys():
        for k, toy in enumerate(toys):
            try:
                pyhf.infer.mle.fit(toy, model)
            except pyhf.exceptions.FailedMinimization:
                failed.append(k)

    toy_s, _ = timed(fit_toys)
    return {
        "toy_fits_failed": len(failed),
        "mle_fit_s": fit_s,
        "mu": float(np.asarray(pars)[model.config.poi_index]),
        "twice_nll": float(twice),
        "toy_fit_s": toy_s / len(toys),
        "gof_fits_s_per_1000_toys": toy_s / len(toys) * 1000,
    }


def main() -> int:
    ws = load_workspace(published_workspace_path())
    results: dict[str, object] = {"model": "belle2_knunu_2023_combined", "cores": 2}
    results["knunu"], lh, best = knunu_engine(ws, "dense")
    results["knunu_before"], _, _ = knunu_engine(ws, "pyhf")
    toys = lh.sample(best.x, PYHF_TOYS, 3)
    results["pyhf_jax_scipy"] = pyhf_fits(ws, "scipy", toys)
    results["pyhf_jax_minuit"] = pyhf_fits(ws, "minuit", toys)
    k, b = results["knunu"], results["knunu_before"]
    ps, pm = results["pyhf_jax_scipy"], results["pyhf_jax_minuit"]
    results["ratios"] = {
        "mle_pyhf_scipy_over_knunu": ps["mle_fit_s"] / k["mle_fit_s"],
        "mle_pyhf_minuit_over_knunu": pm["mle_fit_s"] / k["mle_fit_s"],
        "gof_before_over_now": b["gof_s_per_1000_toys"] / k["gof_s_per_1000_toys"],
        "gof_pyhf_scipy_over_knunu": ps["gof_fits_s_per_1000_toys"] / k["gof_s_per_1000_toys"],
        "impacts_before_over_now": b["impacts_s"] / k["impacts_s"],
        "impacts_pyhf_scipy_fits_over_knunu": ps["toy_fit_s"] * 2 * k["n_impacts"] / k["impacts_s"],
    }
    out = write_results("fit", results)
    r = results["ratios"]
    print(
        f"MLE fit: knunu {k['mle_fit_s']:.4f} s (mu {k['mu']:.4f}); pyhf jax+scipy "
        f"{ps['mle_fit_s']:.3f} s (mu {ps['mu']:.4f}, {r['mle_pyhf_scipy_over_knunu']:.0f}x); "
        f"jax+minuit {pm['mle_fit_s']:.3f} s ({r['mle_pyhf_minuit_over_knunu']:.0f}x)"
    )
    print(f"q0 significance: knunu {k['q0_significance_s']:.4f} s (Z = {k['z0']:.3f})")
    print(
        f"{GOF_TOYS} goodness-of-fit toys: knunu {k['gof_s_per_1000_toys']:.1f} s "
        f"(p = {k['gof_p_value']:.2f}, {k['gof_failed_toys']} failed); before "
        f"{b['gof_s_per_1000_toys']:.1f} s ({r['gof_before_over_now']:.1f}x); pyhf jax+scipy "
        f"{ps['gof_fits_s_per_1000_toys']:.0f} s ({r['gof_pyhf_scipy_over_knunu']:.0f}x, "
        f"{ps['toy_fits_failed']} of {PYHF_TOYS} toy fits failed)"
    )
    print(
        f"impacts of {k['n_impacts']} nuisances: knunu {k['impacts_s']:.2f} s; before "
        f"{b['impacts_s']:.2f} s ({r['impacts_before_over_now']:.1f}x); as pyhf jax+scipy fits "
        f"{ps['toy_fit_s'] * 2 * k['n_impacts']:.0f} s "
        f"({r['impacts_pyhf_scipy_fits_over_knunu']:.0f}x)"
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
