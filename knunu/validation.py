"""The validation suite of a run: checks that produce a number and a plot each.

Every check reads the run's own products (workspaces, histograms, training summaries) and
writes ``<run>/validation/<check>.json`` and a PNG; :func:`run_validation` runs them all and
writes ``validation/summary.json``. The checks:

- ``projection``: the expected sigma(mu) (Asimov at ``measurement.expected_mu``, nuisances
  nominal) of ITA, HTA and the combination at the run's luminosity, and with every template
  scaled to the measurement's luminosity (MC statistical uncertainties shrinking as the larger
  MC would);
- ``injection``: pseudo-experiments drawn from that projected combined model at several
  mu_true, fitted: the mean fitted mu against mu_true must be a line of slope 1;
- ``splits``: the data and templates split in statistically independent halves (kaon charge,
  event-number parity, lepton multiplicity), each half fitted alone: the fitted mu must agree
  (chi2);
- ``efficiency``: the signal efficiency of the ITA and HTA signal regions in bins of q2gen,
  against the published ITA efficiencies;
- ``embedding``: the ITA signal-region efficiency of signal embedded in data events (the
  B+ -> J/psi K+ embedding: nature's other B and detector) over that of the signal MC with its
  corrections; published data/MC 1.00 +- 0.03;
- ``pion sideband`` and ``pi+ K0 closure`` (:mod:`knunu.fits.pion`): the ITA machinery on a
  pion candidate: the 3-component q2rec fit that measures the B(D -> K_L X) scale, and the
  B+ -> pi+ K0 branching fraction against the generated one;
- ``offres``: off-resonance data vs continuum MC before and after the BDTc reweighting (from
  the training), and the goodness-of-fit toys of the fit stage.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyhf

from knunu import published
from knunu.fits.infer import Likelihood
from knunu.fits.validation import (
    SPLIT_LABELS,
    Composition,
    Efficiency,
    SplitFit,
    SplitPair,
    at_bound_text,
    composition,
    efficiencies,
    embedding,
    injection,
    off_resonance,
    poi_range,
    projection,
    published_shapes,
    resonance_factors,
    scaled_spec,
    split_fits,
    with_poi_bounds,
)
from knunu.fits.workspace import select
from knunu.rundir import save_figure, write_json

log = logging.getLogger(__name__)


def _dump(path: Path, value: Any) -> Path:
    return write_json(path, value._asdict() if hasattr(value, "_asdict") else value)


def run_validation(config: dict[str, Any], run_dir: Path) -> list[str]:
    """Run the validation checks the run's products allow; the summary lines.

    Writes ``<run>/validation/*.json`` and plots, ``summary.json`` and ``lines.json``. A
    check that cannot be done (a fit that fails) is reported as FAILED with its reason.
    """
    run_dir = Path(run_dir)
    out = run_dir / "validation"
    lines: list[str] = []
    summary: dict[str, Any] = {}
    fitted = json.loads((run_dir / "fit" / "fitted.json").read_text())
    combined = run_dir / "workspaces" / "combined.json"
    if fitted["own"] and combined.exists():
        lines += _guarded(
            "projection", summary, _projection, config, run_dir, combined, out, summary
        )
    else:
        lines.append(
            f"projection and signal injection: not run ({fitted['label']} was fitted, not "
            "this run's own combined workspace)"
        )
    histograms = run_dir / "histograms.root"
    if histograms.exists():
        blind = bool(config.get("blind", True))
        lines += _guarded("splits", summary, _splits, histograms, out, summary, blind)
        lines += _guarded("efficiency", summary, _efficiency, run_dir, histograms, out, summary)
        lines += _guarded(
            "composition", summary, _composition, config, run_dir, histograms, summary
        )
        if "pion" in config["ita"]:
            for channel, name in SIDEBANDS.items():
                lines += _guarded(
                    name, summary, _sideband, config, run_dir, histograms, out, summary, channel
                )
            lines += _guarded(
                "pion_closure", summary, _closure, config, run_dir, histograms, out, summary
            )
    lines += _offres(run_dir, summary)
    lines += _gof(run_dir, summary)
    write_json(out / "summary.json", summary)
    write_json(out / "lines.json", lines)
    return lines


def _guarded(name: str, summary: dict[str, Any], check: Any, *args: Any) -> list[str]:
    """Run one check; a failure (a fit that cannot be done) is reported, not fatal."""
    from knunu.errors import KnunuError

    try:
        return check(*args)
    except KnunuError as exc:
        log.warning("validation %s failed: %s", name, exc)
        summary[name] = {"error": str(exc)}
        return [f"{name}: FAILED ({exc})"]


def _projection(
    config: dict[str, Any], run_dir: Path, combined: Path, out: Path, summary: dict[str, Any]
) -> list[str]:
    from knunu.fits import plots

    val = config["validation"]
    # the Asimov point is the configured expected mu (the published value), never mu_true
    mu_exp = float(config["measurement"]["expected_mu"])
    spec = json.loads(combined.read_text())
    lumi = _data_luminosity(run_dir)
    factors = _projection_factors(spec, config, run_dir)
    proj = projection(spec, mu_exp, lumi, val["projection_luminosity_fb"], factors)
    _dump(out / "projection.json", proj)
    summary["projection"] = proj._asdict()
    lines = [
        f"expected sigma(mu) at mu = {mu_exp:g}: "
        + ", ".join(f"{a} {s:.1f}" for a, s in proj.sigma.items())
        + f" at {lumi:.3g} fb^-1; "
        + ", ".join(f"{a} {s:.2f}" for a, s in proj.sigma_projected.items())
        + f" projected to {proj.projected_luminosity_fb:g} fb^-1 (published combined "
        + f"{published.EXPECTED_SIGMA['combined']:g})"
    ]
    big_spec = scaled_spec(spec, factors)
    big = pyhf.Workspace(with_poi_bounds(big_spec, poi_range(big_spec)))
    lh = Likelihood.from_workspace(select(big, "combined"))
    inj = injection(lh, val["injection_mu"], val["injection_toys"], config["seed"])
    _dump(out / "injection.json", inj)
    save_figure(plots.injection(inj), out / "injection.png")
    summary["injection"] = inj._asdict()
    lines.append(
        f"signal injection ({val['injection_toys']} toys per mu, combined, "
        f"{val['projection_luminosity_fb']:g} fb^-1): slope {inj.slope:.3f} +- "
        f"{inj.slope_error:.3f}, intercept {inj.intercept:+.3f} +- {inj.intercept_error:.3f}, "
        f"chi2/ndf {inj.chi2:.1f}/{inj.ndf}"
        + (f", {inj.failed} failed fits left out" if inj.failed else "")
        + at_bound_text(inj.at_bound)
    )
    return lines


def _splits(histograms: Path, out: Path, summary: dict[str, Any], blind: bool = False) -> list[str]:
    """The consistency splits; while blind only their agreement (chi2, p), no half's mu."""
    from knunu.fits import plots

    pairs = split_fits(histograms)
    summary["splits"] = [
        {
            "halves": [SPLIT_LABELS[h.split] for h in p.halves]
            if blind
            else [h._asdict() for h in p.halves],
            "chi2": p.chi2,
            "p_value": p.p_value,
        }
        for p in pairs
    ]
    if blind:
        return [
            "consistency (ITA, independent halves; blinded: agreement only): "
            + "; ".join(
                f"{SPLIT_LABELS[a.split]} vs {SPLIT_LABELS[b.split]} p = {p.p_value:.2f}"
                for p in pairs
                for a, b in [p.halves]
            )
            + _left_out(pairs)
        ]
    save_figure(plots.splits(pairs, SPLIT_LABELS), out / "splits.png")
    return [
        "consistency (ITA, independent halves): "
        + "; ".join(
            f"{SPLIT_LABELS[a.split]} mu = {a.mu:.1f} +- {a.error:.1f}{_edge(a)} vs "
            f"{SPLIT_LABELS[b.split]} {b.mu:.1f} +- {b.error:.1f}{_edge(b)} (p = {p.p_value:.2f})"
            for p in pairs
            for a, b in [p.halves]
        )
        + _left_out(pairs)
    ]


def _left_out(pairs: list[SplitPair]) -> str:
    """The events of halves' channels without any MC, left out of their fits ('' if none)."""
    out = [f"{SPLIT_LABELS[h.split]} {h.left_out:g}" for p in pairs for h in p.halves if h.left_out]
    return f"; events left out (a half's channel without any MC): {', '.join(out)}" if out else ""


def _edge(fit: SplitFit) -> str:
    return " (at its bound)" if fit.at_bound else ""


def _efficiency(run_dir: Path, histograms: Path, out: Path, summary: dict[str, Any]) -> list[str]:
    from knunu.fits import plots

    doc = json.loads((run_dir / "ntuples" / "catalogue.json").read_text())
    produced = float(doc["datasets"]["signal"]["generated"])
    effs = efficiencies(histograms, produced)
    if not effs:
        return []
    summary["efficiency"] = [e._asdict() for e in effs]
    lines = _embedding(run_dir, effs, out, summary)
    save_figure(
        plots.efficiency_q2(effs, published.ITA_EFFICIENCY_Q2), out / "efficiency_q2gen.png"
    )
    for e in effs:
        lines.append(
            f"{e.analysis.upper()} signal efficiency {e.total:.4f} in total; vs q2gen: "
            + ", ".join(
                f"{lo:g}-{hi:g}: {v:.3g}"
                for lo, hi, v in zip(e.edges[:-1], e.edges[1:], e.efficiency, strict=True)
                if lo < 18
            )
        )
    lines.append(
        "  published ITA: "
        + ", ".join(
            f"{lo:g}-{hi:g}: {v:.3g}" for (lo, hi), v in published.ITA_EFFICIENCY_Q2.items()
        )
    )
    return lines


def _composition(
    config: dict[str, Any], run_dir: Path, histograms: Path, summary: dict[str, Any]
) -> list[str]:
    """The ITA signal region's composition at 362 fb^-1 against the published one (issue 17)."""
    from knunu.fits.build import ITA_SAMPLES

    target = float(config["simulation"]["luminosity_fb"]["on_resonance"])
    comp = composition(histograms, target / _data_luminosity(run_dir), ITA_SAMPLES)
    shapes = {k: v.tolist() for k, v in comp.shapes.items()}
    summary["composition"] = {**comp._asdict(), "shapes": shapes, "luminosity_fb": target}
    bkg = {k: v for k, v in comp.yields.items() if k != "signal"}
    total = sum(bkg.values())
    shares = ", ".join(
        f"{k} {v / total:.1%} ({comp.effective[k]:.0f} eff.; published "
        f"{published.ITA_SR_COMPOSITION.get(k, math.nan):.1%})"
        for k, v in bkg.items()
    )
    classes = ", ".join(
        f"{name} {share:.0%} ({eff:.0f} eff.)"
        + (f" (published {published.ITA_SR_BBBAR_CLASSES[name]:.0%}"
           + (", its 'decays with K_L', a narrower class)" if "K_L" in name else ")")
           if name in published.ITA_SR_BBBAR_CLASSES else "")
        for name, (share, eff) in comp.bbbar_classes.items()
    )  # fmt: skip
    s_b = comp.s_over_b
    by_class = (
        [f"  B Bbar by the decay of either B (classes overlap): {classes}"] if classes else []
    )
    return [
        f"ITA signal region at {target:g} fb^-1, pre-fit templates at mu = 1 (MC with its "
        f"corrections, before nature's): background {total:.0f} (published "
        f"{published.ITA_SR_BACKGROUND:.0f}), signal {comp.yields['signal']:.0f} (published "
        f"{published.ITA_SR_SIGNAL:.0f}); S/B {s_b['eta > 0.92']:.2%} (published "
        f"{published.ITA_SR_S_OVER_B['eta > 0.92']:.2%}), for eta > 0.98 "
        f"{s_b['eta > 0.98']:.2%} ({published.ITA_SR_S_OVER_B['eta > 0.98']:.1%})",
        f"  background by sample: {shares}",
        *by_class,
        *_shapes(comp),
    ]


def _shapes(comp: Composition) -> list[str]:
    """Each sample's yield and shape in eta and q2rec against the published pre-fit template."""
    theirs = published_shapes()

    def fractions(values: np.ndarray) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    lines = [
        "  by sample against the published pre-fit templates (their values in brackets): "
        "yield ratio; fractions in q2rec -1-4 / 4-8 / 8-25 GeV^2; in eta(BDT2) 0.92-0.94 / "
        "0.94-0.96 / 0.96-0.98 / 0.98-1"
    ]
    for sample, mine in comp.shapes.items():
        if sample not in theirs or not np.isfinite(mine).all():
            continue
        ref = theirs[sample] / theirs[sample].sum()
        ratio = comp.yields[sample] / theirs[sample].sum()
        lines.append(
            f"    {sample}: x{ratio:.2f}; q2rec {fractions(mine.sum(axis=0))} "
            f"({fractions(ref.sum(axis=0))}); eta {fractions(mine.sum(axis=1))} "
            f"({fractions(ref.sum(axis=1))})"
        )
    return lines


def _embedding(
    run_dir: Path, effs: list[Efficiency], out: Path, summary: dict[str, Any]
) -> list[str]:
    catalogue = json.loads((run_dir / "ntuples" / "catalogue.json").read_text())["datasets"]
    cutflows = json.loads((run_dir / "histograms.json").read_text())["cutflows"]
    ita = [e for e in effs if e.analysis == "ita"]
    if "embedded" not in catalogue or "embedded" not in cutflows or not ita:
        return ["J/psi K+ embedding: no embedded sample in this run"]
    selected = float(cutflows["embedded"]["events"]["eta > 0.92"])
    emb = embedding(ita[0], selected, float(catalogue["embedded"]["events"]))
    summary["embedding"] = emb._asdict()
    _dump(out / "embedding.json", emb)
    return [
        f"J/psi K+ embedding (ITA signal region): efficiency {emb.data:.4f} +- "
        f"{emb.data_error:.4f} embedded in data, {emb.mc:.4f} +- {emb.mc_error:.4f} MC; data/MC "
        f"{emb.ratio:.3f} +- {emb.ratio_error:.3f} (published "
        f"{published.EMBEDDING_RATIO[0]:.2f} +- {published.EMBEDDING_RATIO[1]:.2f})"
    ]


#: The sideband fits: histogram channel -> check name (every event; events with a lepton, the
#: paper's check on lepton-enriched samples).
SIDEBANDS = {"pion": "pion_sideband", "pion_lepton": "pion_sideband_lepton"}


def _sideband(
    config: dict[str, Any],
    run_dir: Path,
    histograms: Path,
    out: Path,
    summary: dict[str, Any],
    channel: str,
) -> list[str]:
    from knunu.fits import plots
    from knunu.fits.pion import sideband_fit

    pion = config["ita"]["pion"]
    projected = float(config["validation"]["projection_luminosity_fb"])
    nature = config["simulation"]["nature"].get("d_to_kl_scale", 1.0)
    name = SIDEBANDS[channel]
    what = "pion-enriched sideband" + (", events with a lepton" if channel != "pion" else "")
    fit = sideband_fit(
        histograms, pion["sideband_eta"], _data_luminosity(run_dir), projected, channel
    )
    summary[name] = {**fit._asdict(), "postfit": fit.postfit._asdict()}
    _dump(out / f"{name}.json", summary[name])
    save_figure(
        plots.postfit_q2rec(
            fit.postfit,
            f"{what}, eta {fit.eta[0]:g}-{fit.eta[1]:g}: "
            f"D -> K_L scale {fit.d_to_kl_scale:.2f} +- {fit.d_to_kl_error:.2f}",
        ),
        out / f"{name}.png",
    )
    return [
        f"{what} (eta {fit.eta[0]:g}-{fit.eta[1]:g}, {fit.data_events:.0f} data events, "
        f"{fit.bins} bins): B(D -> K_L X) scale {fit.d_to_kl_scale:.2f} +- "
        f"{fit.d_to_kl_error:.2f} (simulated nature {nature:g}; published +30 %; "
        f"+- {fit.projected_error:.2f} projected to {projected:g} fb^-1), other B Bbar "
        f"{fit.bbbar_other:.2f} +- {fit.bbbar_other_error:.2f}, continuum "
        f"{fit.continuum:.2f} +- {fit.continuum_error:.2f} (correlation scale/other B Bbar "
        f"{fit.correlation:+.2f})"
    ]


def _closure(
    config: dict[str, Any], run_dir: Path, histograms: Path, out: Path, summary: dict[str, Any]
) -> list[str]:
    from knunu.fits import plots
    from knunu.fits.pion import closure
    from knunu.simulation.bdecays import load_strata, stratum_bf

    pion = config["ita"]["pion"]
    generated = stratum_bf(load_strata()["pi_k0"], 521)
    fit = closure(
        histograms,
        pion["closure_eta"],
        float(config["ita"]["corrections"]["d_to_kl_scale"]),
        generated,
        _data_luminosity(run_dir),
        float(config["validation"]["projection_luminosity_fb"]),
    )
    summary["pion_closure"] = {**fit._asdict(), "postfit": fit.postfit._asdict()}
    _dump(out / "pion_closure.json", summary["pion_closure"])
    save_figure(
        plots.postfit_q2rec(
            fit.postfit,
            f"B+ -> pi+ K0 closure: B = ({fit.bf * 1e5:.1f} +- {fit.bf_error * 1e5:.1f}) x 1e-5",
        ),
        out / "pion_closure.png",
    )
    bound = " (at its bound)" if fit.at_bound else ""
    return [
        f"B+ -> pi+ K0 closure (ITA machinery, pion ID, eta > {pion['closure_eta'][0]:g}; "
        f"{fit.signal_expected:.2f} pi+ K0 events expected, {fit.data_events:.0f} data events): "
        f"B = ({fit.bf * 1e5:.2f} +- {fit.bf_error * 1e5:.2f}) x 10^-5{bound} vs generated "
        f"{generated * 1e5:.2f} x 10^-5; expected +- {fit.expected_error * 1e5:.2f} here, "
        f"+- {fit.projected_error * 1e5:.2f} projected to {fit.projected_luminosity_fb:g} fb^-1 "
        f"(published ({published.PI_K0_BF[0] * 1e5:.1f} +- {published.PI_K0_BF[1] * 1e5:.1f}) "
        "x 10^-5)"
    ]


def _offres(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    path = run_dir / "models" / "training.json"
    if not path.exists():
        return []
    t = json.loads(path.read_text())["summary"]
    summary["offres"] = {
        k: t[k]
        for k in ("offres_data_over_mc", "offres_chi2_before", "offres_chi2_after", "offres_ndf")
    }
    return [
        f"off-resonance data / continuum MC {t['offres_data_over_mc']:.2f} (nature: "
        f"continuum_norm); shape chi2/ndf {t['offres_chi2_before']:.2f} before BDTc, "
        f"{t['offres_chi2_after']:.2f} after (ndf {t['offres_ndf']})"
    ]


def _gof(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    doc = json.loads((run_dir / "fit" / "results.json").read_text())
    gof = {
        r["analysis"]: {
            "p_value": r["gof_p_value"],
            "toys": r["gof_toys"],
            "failed": r["gof_failed"],
        }
        for r in doc["results"]
        if r.get("gof_p_value") is not None
    }
    summary["gof"] = gof
    if not gof:
        return []
    return [
        "goodness of fit (saturated model): "
        + ", ".join(f"{a} p = {g['p_value']:.2f} ({g['toys']} toys)" for a, g in gof.items())
        + " (published: "
        + ", ".join(f"{a.upper()} {p:.2f}" for a, p in published.GOF_P_VALUE.items())
        + ")"
    ]


def _data_luminosity(run_dir: Path, dataset: str = "data_on") -> float:
    """Luminosity of a run's data dataset (fb^-1; on resonance by default), from its catalogue."""
    doc = json.loads((run_dir / "ntuples" / "catalogue.json").read_text())
    return float(doc["datasets"][dataset]["luminosity_fb"])


def _projection_factors(
    spec: dict[str, Any], config: dict[str, Any], run_dir: Path
) -> dict[str, float]:
    """Per channel, the projection's scaling of the templates.

    On resonance to ``projection_luminosity_fb``, off resonance to the configured off/on
    luminosity ratio of it: the run's off-resonance data may have more luminosity than that
    ratio gives (``off_resonance_data_factor``).
    """
    target = float(config["validation"]["projection_luminosity_fb"])
    lum = config["simulation"]["luminosity_fb"]
    target_off = target * float(lum["off_resonance"]) / float(lum["on_resonance"])
    on = target / _data_luminosity(run_dir)
    has_off = any(off_resonance(c["name"]) for c in spec["channels"])
    off = target_off / _data_luminosity(run_dir, "data_off") if has_off else on
    return resonance_factors(spec, on, off)
