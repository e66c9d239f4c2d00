"""Fit-engine benchmark on the published Belle II likelihood (232 parameters, 2 cores).

Side by side in one process: knunu's compiled engine against pyhf 0.7.6's own defaults
(jax backend + Minuit, the fastest pyhf configuration measured here). Reports times after
compilation and their ratios, plus whether pyhf's q0 hypotest succeeds. Writes
benchmarks/results/fit.json. Run with `make bench`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyhf

from knunu.fits.infer import Likelihood, goodness_of_fit, impacts, significance
from knunu.fits.workspace import load_workspace, published_workspace_path


def timed(func, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = func()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> int:
    ws = load_workspace(published_workspace_path())
    results: dict[str, object] = {"model": "belle2_knunu_2023_combined", "cores": 2}

    # knunu
    lh = Likelihood.from_workspace(ws)
    first_s, _ = timed(lh.fit)  # includes jit compilation
    fit_s, best = timed(lh.fit, repeat=3)
    hesse_s, unc = timed(lambda: lh.uncertainties(best), repeat=2)
    z_s, z0 = timed(lambda: significance(lh, best, 0.0), repeat=2)
    imp_s, ranked = timed(lambda: impacts(lh, best, unc))
    n_toys = 200
    gof_s, gof = timed(lambda: goodness_of_fit(lh, best, n_toys, seed=1))
    results["knunu"] = {
        "first_fit_with_compilation_s": first_s,
        "mle_fit_s": fit_s,
        "hesse_s": hesse_s,
        "q0_significance_s": z_s,
        "mu": float(best.x[lh.poi]),
        "mu_err": float(unc.error[lh.poi]),
        "twice_nll": 2 * best.nll,
        "z0": z0,
        "impacts_all_nuisances_s": imp_s,
        "n_impacts": len(ranked),
        "gof_toys": n_toys,
        "gof_s": gof_s,
        "gof_s_per_1000_toys": gof_s * 1000 / n_toys,
        "gof_p_value": gof.p_value,
    }

    # pyhf defaults: jax backend + minuit
    pyhf.set_backend("jax", "minuit")
    model = ws.model()
    data = ws.data(model)
    pyhf.infer.mle.fit(data, model)  # warm-up (jit)
    pf_s, (pars, twice) = timed(lambda: pyhf.infer.mle.fit(data, model, return_fitted_val=True))
    try:
        hy_s, _ = timed(lambda: pyhf.infer.hypotest(0.0, data, model, test_stat="q0"))
        hypotest = f"ok in {hy_s:.1f} s"
    except Exception as exc:  # recording pyhf's failure is the point
        hypotest = f"failed: {type(exc).__name__}"
    results["pyhf_jax_minuit"] = {
        "mle_fit_s": pf_s,
        "mu": float(np.asarray(pars)[model.config.poi_index]),
        "twice_nll": float(twice),
        "hypotest_q0": hypotest,
    }
    results["ratio_mle_pyhf_over_knunu"] = pf_s / fit_s

    out = Path(__file__).parent / "results" / "fit.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    k, p = results["knunu"], results["pyhf_jax_minuit"]
    print(
        f"knunu  MLE fit {k['mle_fit_s']:.3f} s (first, with compilation {first_s:.1f} s), "
        f"mu = {k['mu']:.4f}, 2NLL = {k['twice_nll']:.5f}"
    )
    print(f"pyhf   MLE fit {p['mle_fit_s']:.3f} s, mu = {p['mu']:.4f}, 2NLL = {p['twice_nll']:.5f}")
    print(f"speed-up (pyhf / knunu): {results['ratio_mle_pyhf_over_knunu']:.1f}x")
    print(
        f"knunu q0 significance {k['q0_significance_s']:.3f} s (Z = {k['z0']:.3f}); "
        f"pyhf hypotest(q0): {hypotest}"
    )
    print(
        f"knunu impacts of {len(ranked)} nuisances {imp_s:.1f} s; goodness of fit "
        f"{gof_s * 1000 / n_toys:.0f} s per 1000 toys (p = {gof.p_value:.2f})"
    )
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
