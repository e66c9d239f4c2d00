"""Reinterpretation speed: knunu.reinterpret against redist, side by side, same inputs.

The peer is redist (lorenzennio/redist, the published reinterpretation's own tool) at its
fastest setting: version 2.0.0 with Gauss-Legendre bin integrals (``quad="gauss"``, 1-2 orders
of magnitude faster than its default adaptive quadrature), a pyhf custom modifier per region,
pyhf's numpy backend with iminuit (as knunu-reinterpretation-mini fits) and with scipy. Both
fit the published likelihood with the published maps, the same alternative (EOS's rate,
BSZ2015 form factors with their covariance as 8 constrained nuisances) and the same null.

Measured:
- one parameter point: the model's log-likelihood at a new coupling point (knunu: compiled
  dense model, the templates a product of the map with the precomputed bin integrals; redist:
  bin integrals of the alternative at that point, then pyhf's logpdf);
- one best fit of (|C_V|, |C_S|, |C_T|, form factors, 229 nuisances) from the SM point;
- knunu only (the issue's targets): one 100 x 100 2D profile scan, a 200-point m_X scan of
  CLs limits (observed and expected) and local significance.

Run: .venv/bin/python benchmarks/bench_reinterpret.py (``make bench`` installs redist first).
Results: benchmarks/results/reinterpret.json.
"""

from __future__ import annotations

import json
import time

import numpy as np
from _results import write_results

from knunu.fits.infer import Likelihood
from knunu.fits.workspace import load_workspace, published_workspace_path
from knunu.reinterpret import maps, scan, spectra

NULL = spectra.NULLS["belle2"]
CHANNELS = {
    "regA": ("A__Bsig_H_reconstructed_q2_vs_BDT2_Bplus2Kplus_v42_signal_inefficiency_zoomSR_Y4S",
             "signal", "ita_on_sr"),
    "regB": ("B__Bsig_H_reconstructed_q2_vs_BDT2_Bplus2Kplus_v42_signal_inefficiency_zoomCR_Y4S",
             "signal", "ita_on_cr"),
    "hta": ("sgn1_had", "sgn_1_had", "hta_sr"),
}  # fmt: skip


def _best(f, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def knunu_side() -> dict:
    ws = load_workspace(published_workspace_path())
    pm = maps.published_maps()
    t0 = time.perf_counter()
    lh = Likelihood.from_workspace(scan.wet_workspace(ws, pm, NULL))
    x = lh.init.copy()
    lh.nll(x)
    lh.value_and_grad(x)
    compile_s = time.perf_counter() - t0
    idx = [lh.labels.index(n) for n in spectra.WET_TERMS]
    rng = np.random.default_rng(1)

    def point() -> None:
        y = x.copy()
        y[idx] = (rng.uniform(0, 20, 3) / spectra.C_VL_SM) ** 2
        lh.nll(y)

    fit_s = _best(lambda: lh.fit(init=x), 3)
    best = lh.fit()
    result = scan.fit_wet(lh, "observed", n_grid=3, pairs=())
    t = time.perf_counter()
    scan.fit_wet(lh, "observed", n_grid=2, pairs=(("wet_V", "wet_T"),), n_grid_2d=100)
    scan2d_s = time.perf_counter() - t
    t = time.perf_counter()
    xs = scan.scan_x(ws, pm, NULL, np.linspace(0.0, 4.6, 200), expected=True)
    mass_s = time.perf_counter() - t
    return {
        "compile_s": compile_s,
        "point_ms": 1e3 * _best(point, 50),
        "fit_s": fit_s,
        "best": result.best,
        "nll": float(best.nll),
        "scan_2d_100x100_s": scan2d_s,
        "mass_scan_200_s": mass_s,
        "mass_scan_failed": len(xs.failed),
    }


def redist_side(optimizer: str) -> dict:
    import pyhf
    from redist import modifier

    ff = spectra.form_factors()

    def alt(q2, cvl, csl, ctl, *ffk):  # dB/dq2 of the WET model (EOS's rate)
        dens = spectra.wet_densities(np.asarray(q2), np.asarray(ffk))
        c = np.array([cvl, csl, ctl]) / spectra.C_VL_SM
        return np.tensordot(c**2, dens, axes=1)

    def null(q2):
        return spectra.null_density(np.asarray(q2), NULL)

    new_pars = {
        "cvl": {"inits": (spectra.C_VL_SM,), "bounds": ((0.0, 20.0),),
                "paramset_type": "unconstrained"},
        "csl": {"inits": (0.0,), "bounds": ((0.0, 20.0),), "paramset_type": "unconstrained"},
        "ctl": {"inits": (0.0,), "bounds": ((0.0, 20.0),), "paramset_type": "unconstrained"},
        "FFK": {"inits": tuple(ff.mean), "bounds": (), "cov": ff.cov,
                "paramset_type": "constrained_by_normal"},
    }  # fmt: skip
    pm = maps.published_maps()
    bins = [list(maps.Q2_EDGES)]
    pyhf.set_backend("numpy", optimizer)
    t0 = time.perf_counter()
    cmods = {
        name: modifier.Modifier(new_pars, alt, null, pm[region].values, bins, name=name,
                                cutoff=((0.0, 22.885),), quad="gauss")
        for name, (_, _, region) in CHANNELS.items()
    }  # fmt: skip
    ws = load_workspace(published_workspace_path())
    ws = ws.prune(modifiers=["mu"]).prune(modifiers=["corr_ff_c1", "corr_ff_c2", "corr_ff_c3"])
    model = ws.model(poi_name=None)
    expanded = {k: v for c in cmods.values() for k, v in c.expanded_pyhf.items()}
    for name, (channel, sample, _) in CHANNELS.items():
        spec = {"name": f"{name}_theory", "type": name, "data": {"expr": f"{name}_weight_fn"}}
        model = modifier.add_to_model(model, [channel], [sample], expanded, spec, poi_name=None)
    data = np.asarray(ws.data(model, include_auxdata=False) + model.config.auxdata)
    x = np.asarray(model.config.suggested_init(), dtype=float)
    model.logpdf(x, data)
    build_s = time.perf_counter() - t0
    sl = [model.config.par_slice(n).start for n in ("cvl", "csl", "ctl")]
    rng = np.random.default_rng(1)

    def point() -> None:
        y = x.copy()
        y[sl] = rng.uniform(0, 20, 3)  # a new point: its bin integrals are not cached
        model.logpdf(y, data)

    t = time.perf_counter()
    best = pyhf.infer.mle.fit(data, model, init_pars=x.tolist())
    fit_s = time.perf_counter() - t
    nll = -float(model.logpdf(best, data)[0])
    return {
        "build_s": build_s,
        "point_ms": 1e3 * _best(point, 10),
        "fit_s": fit_s,
        "best": {n: float(best[s]) for n, s in zip(spectra.WET_TERMS, sl, strict=True)},
        "nll": nll,
    }


def main() -> None:
    ours = knunu_side()
    peers = {}
    for optimizer in ("scipy", "minuit"):
        try:
            peers[optimizer] = redist_side(optimizer)
        except ImportError as exc:
            peers[optimizer] = {"error": f"redist not installed ({exc})"}
    result = {"knunu": ours, "redist_2.0.0_gauss": peers}
    for name, peer in peers.items():
        if "error" in peer:
            continue
        result[f"ratio_point_{name}"] = peer["point_ms"] / ours["point_ms"]
        result[f"ratio_fit_{name}"] = peer["fit_s"] / ours["fit_s"]
    write_results("reinterpret", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
