"""The measurement at Belle II's luminosity: histogram-level pseudo-data, templates, blinding.

The binned fit sees only counts per bin, so the measurement at 362 fb^-1 (on resonance) and
42 fb^-1 (off resonance) needs no event-level pseudo-data: the pseudo-data are Poisson counts
per fit bin drawn from the *nature stream* (``nature_on``/``nature_off``: an MC made as nature
makes events, with every nature switch and signal at ``mu_true``, weighted to nature's
expectation at the data luminosity, independent of the templates), scaled to the measurement's
luminosity. The templates are the run's MC histograms scaled the same way; their MC
statistical uncertainties stay what the MC has (relative errors unchanged), so a small MC shows
up as a large ``staterror`` impact, never as a false precision.

Blinding as in the real analysis: while ``blind`` is set, the pseudo-data are fitted only for
the fit quality (goodness of fit: a p-value), and everything quoted is expected (Asimov at
``measurement.expected_mu``, the published central value, never ``mu_true``). ``knunu run
--unblind`` adds the observed results: mu (stat, syst, MINOS), B, Z vs 0 and vs the SM, next
to ``mu_true``.

Outputs in ``<run>/measurement/``: ``histograms.root`` (templates and pseudo-data at the
measurement luminosity), ``workspaces/{ita,hta,combined}.json``, ``summary.json`` (luminosity,
effective MC events per signal-region template, expected results, fit quality, signal
injection, merged bins; ``observed`` only when unblinded) and plots.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import hist
import numpy as np
import pyhf
import uproot

from knunu.errors import FitError, InputError, KnunuError
from knunu.rundir import atomic_path, save_figure, write_json

log = logging.getLogger(__name__)

#: The fit histograms and the samples each holds (``data`` and ``nature`` besides).
FIT_HISTOGRAMS = ("ita_on", "ita_off", "hta")
#: Which luminosity a fit histogram scales with.
RESONANCE = {"ita_on": "on", "ita_off": "off", "hta": "on"}
#: The signal-region channels whose MC statistics the report lists.
SR_CHANNELS = {"ita_on": (1, 2, 3), "hta": None}
#: The models fitted, in headline order.
MODELS = ("combined", "ita", "hta")
#: POI range of the measurement fits (the lower end is raised where a bin would turn negative).
POI_BOUNDS = (-10.0, 30.0)


class McStatistics(NamedTuple):
    """MC statistics of one signal-region template at the measurement luminosity.

    ``effective`` is (sum w)^2 / sum w^2 over the signal-region bins; ``min_ratio`` is the
    smallest, over those bins, of the background's effective MC events over its expected
    events in the data (only for the ``background`` row; the target is >= 2).
    """

    histogram: str
    sample: str
    expected: float
    effective: float
    min_ratio: float | None = None


def _parse(key: str) -> tuple[str, str, str] | None:
    """(histogram, sample, variation) of a fit-histogram key, else None.

    >>> _parse("ita_on_ccbar_br_c1_up"), _parse("ita_on_control_ccbar_nominal")
    (('ita_on', 'ccbar', 'br_c1_up'), None)
    """
    from knunu.fits.build import HTA_SAMPLES, ITA_SAMPLES

    known = {*ITA_SAMPLES, *HTA_SAMPLES, "data", "nature"}
    for name in FIT_HISTOGRAMS:
        if key.startswith(name + "_"):
            sample, _, variation = key[len(name) + 1 :].partition("_")
            if sample in known and variation:
                return name, sample, variation
    return None


def _samples_of(name: str) -> tuple[str, ...]:
    from knunu.fits.build import HTA_SAMPLES, ITA_OFFRES_SAMPLES, ITA_SAMPLES

    return {"ita_on": ITA_SAMPLES, "ita_off": ITA_OFFRES_SAMPLES, "hta": HTA_SAMPLES}[name]


class Scaled(NamedTuple):
    """What :func:`measurement_histograms` wrote."""

    path: Path
    factors: dict[str, float]  # luminosity factor per resonance (on, off)
    pseudo_data: dict[str, float]  # total pseudo-data events per fit histogram
    merged: tuple[tuple[str, int, float], ...]  # (histogram, bin, pseudo-data) without MC
    mc: tuple[McStatistics, ...]
    nature: tuple[McStatistics, ...]
    factorised: dict[str, dict[str, Any]] | None = None  # per template (see _factorise)
    # per histogram: the sources factorised, each with its loose eta cut
    nature_factorised: dict[str, dict[str, float]] | None = None
    # per histogram: the factorisation's closure correction per eta row (ratio, error)
    corrections: dict[str, dict[str, list[float]]] | None = None


def measurement_histograms(
    histograms: str | Path,
    out: str | Path,
    data_luminosity: dict[str, float],
    target_luminosity: dict[str, float],
    seed: int,
    factorise: Mapping[str, Any] | None = None,
) -> Scaled:
    """Templates and histogram-level pseudo-data at the measurement luminosity.

    Every fit template (each variation) is scaled by ``target / data`` luminosity of its
    resonance; Weight storage scales its variances by the square, so the relative MC
    statistical uncertainty stays what the MC has. ``{histogram}_data_nominal`` becomes
    Poisson counts of the scaled nature histogram (seeded). A bin with pseudo-data where no
    template MC has any is listed (``merged``): its events are kept, and the workspaces merge
    the bin into the one before it (:func:`knunu.fits.build.drop_empty_bins`), as the fit
    stage does, so no pseudo-data event is lost.

    With ``factorise`` (``measurement.factorise``: ``samples``, ``loose_eta``, ``replicas``),
    the ITA templates of those samples (every variation) are factorised from
    their loose histograms (:mod:`knunu.fits.factorise`: a power law in eta, corrected per
    eta row by its closure in seven windows below the signal region, summed over the ITA
    samples), with the systematic variation ``factorisation_{up,down}`` (the correction +- the
    windows' spread and its MC error) and the closure tests in ``factorised``.

    Raises:
        InputError: the file has no nature stream (``nature`` fit histograms).
    """
    histograms, out = Path(histograms), Path(out)
    factors = {k: target_luminosity[k] / data_luminosity[k] for k in ("on", "off")}
    rng = np.random.default_rng([int(seed), 0x6E61747572])  # "natur": its own stream
    written, nature, done, nature_sources, corrections = _scaled_templates(
        histograms, factors, factorise, seed
    )
    pseudo, merged, mc, nat = {}, [], [], []
    for name in sorted(nature):
        template = sum(
            written[f"{name}_{s}_nominal"].values() for s in _samples_of(name)
        )  # fmt: skip
        data, without_mc = _pseudo_data(name, nature[name], template, rng)
        merged += without_mc
        written[f"{name}_data_nominal"] = data
        pseudo[name] = float(data.values().sum())
        if name in SR_CHANNELS:
            mc += _mc_statistics(name, written, nature[name])
            nat.append(_effective(name, "nature", nature[name]))
    with atomic_path(out) as tmp, uproot.recreate(tmp) as g:
        for key in sorted(written):
            g[key] = written[key]
    return Scaled(
        out,
        factors,
        pseudo,
        tuple(merged),
        tuple(mc),
        tuple(nat),
        done,
        nature_sources,
        corrections,
    )


def _scaled_templates(
    histograms: Path,
    factors: dict[str, float],
    factorise: Mapping[str, Any] | None,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The fit templates and nature's histograms scaled to the target luminosity.

    Returns (templates by key, nature by histogram, the factorised templates' closure tests,
    by histogram the samples nature's factorised expectation is made of, with their cuts,
    by histogram the closure correction per eta row).

    Raises:
        InputError: the file has no nature stream.
    """
    written: dict[str, Any] = {}
    with uproot.open(histograms) as f:
        keys = sorted({k.split(";")[0] for k in f.keys(cycle=True)})
        parsed = {k: p for k in keys if (p := _parse(k)) is not None}
        natures = {p[0] for p in parsed.values() if p[1] == "nature"}
        if not natures:
            raise InputError(
                f"{histograms}: no nature stream (no '*_nature_nominal' fit histograms): set "
                "simulation.scales.<scale>.nature to make the measurement's pseudo-data"
            )
        for key, (name, sample, _) in parsed.items():
            if sample in ("data", "nature") or name not in natures:
                continue
            written[key] = f[key].to_hist() * factors[RESONANCE[name]]
        nature = {n: f[f"{n}_nature_nominal"].to_hist() * factors[RESONANCE[n]] for n in natures}
        loose = _loose_histograms(f, keys, written, factors, factorise) if factorise else {}
        corrections = _corrections(loose)
        done, shapes = _factorise(loose, written, factorise, seed, corrections)
        nature_sources: dict[str, dict[str, float]] = {}
        for name in ("ita_on", "ita_off") if factorise else ():
            if name in nature:
                used = _factorise_nature(f, keys, name, nature, factors[RESONANCE[name]], shapes)
                if used is not None:
                    nature_sources[name] = used
    as_lists = {
        n: {k: v.tolist() for k, v in c._asdict().items() if v is not None}
        for n, c in corrections.items()
    }
    return written, nature, done, nature_sources, as_lists


def _pseudo_data(
    name: str, nature: hist.Hist, template: np.ndarray, rng: np.random.Generator
) -> tuple[hist.Hist, list[tuple[str, int, float]]]:
    """Poisson counts of the nature histogram; the bins with events but no template MC.

    Returns:
        (the pseudo-data histogram, the (histogram, flat bin, events) where no template MC is).
    """
    counts = rng.poisson(np.clip(nature.values(), 0.0, None)).astype(float)
    empty = (template <= 0) & (counts > 0)
    without_mc = []
    for idx in zip(*np.nonzero(empty), strict=True):
        flat = int(np.ravel_multi_index(idx, counts.shape))
        without_mc.append((name, flat, float(counts[idx])))
        log.warning(
            "measurement: %s bin %d: %g pseudo-data events where no template MC has any "
            "(MC statistics too small for this binning): the workspace merges the bin into "
            "the one before it",
            name,
            flat,
            counts[idx],
        )
    data = nature.copy()
    data.view().value = counts
    data.view().variance = counts
    return data, without_mc


def _loose_histograms(
    f: Any,
    keys: list[str],
    written: Mapping[str, Any],
    factors: dict[str, float],
    spec: Mapping[str, Any],
) -> dict[str, dict[str, dict[str, Any]]]:
    """The loose histograms of the configured samples' templates, read once and scaled.

    By ITA histogram, sample and variation (``{name}_loose_{sample}_{variation}``). A template
    in ``written`` without a loose nominal is named (not factorised).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in ("ita_on", "ita_off"):
        for sample in spec["samples"]:
            prefix = f"{name}_loose_{sample}_"
            variations = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
            if f"{name}_{sample}_nominal" not in written:
                continue
            if "nominal" not in variations:
                log.warning("measurement: %s %s: no loose histogram, not factorised", name, sample)
                continue
            scale = factors[RESONANCE[name]]
            out.setdefault(name, {})[sample] = {
                v: f[prefix + v].to_hist() * scale for v in variations
            }
    return out


def _corrections(loose: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The closure correction of the factorised templates, the same for every ITA histogram.

    From the loose nominals of the configured samples on and off resonance, summed
    (:func:`knunu.fits.factorise.sideband_correction`): the method's bias is the same in both,
    and the off-resonance MC alone is thin (at the default scale its rows' ratios scatter
    0.6-1.9 with errors of 0.2-1.1).
    """
    from knunu.fits import factorise as fz

    nominals = [h["nominal"] for samples in loose.values() for h in samples.values()]
    if not nominals:
        return {}
    correction = fz.sideband_correction((h.values(), h.variances()) for h in nominals)
    return dict.fromkeys(loose, correction)


def _factorise_nature(
    f: Any,
    keys: list[str],
    name: str,
    nature: dict[str, Any],
    scale: float,
    shapes: Mapping[str, tuple[float, np.ndarray]],
) -> dict[str, float] | None:
    """Nature's expectation of an ITA fit histogram, its factorised sources' eta shapes the MC's.

    The nature stream is an MC too: its signal-region expectation, filled event by event, holds
    few MC events, and the pseudo-data would carry its fluctuations. Per source sample
    (``{name}_source_{sample}_nominal``, eta 0.5-1 x q2rec) whose template was factorised,
    nature's events above the template's loose cut, per q2rec bin, times the template's eta
    fractions (``shapes``: by template, its cut and fractions, :func:`_factorise`); the others
    (signal at ``mu_true``, control modes, thin samples) summed as filled. Their sum replaces
    ``nature[name]`` (the filled sum must agree with it).

    Nature's own power law, fitted on 8-20 effective events per q2rec bin off resonance
    (powers 0.6-6.4), put up to 24x the templates' background into a top row (stop 53).

    Returns:
        The factorised sources with their loose eta cuts; ``None`` without sources.
    """
    from knunu.fits import factorise as fz
    from knunu.processors.ita import ETA_EDGES

    prefix = f"{name}_source_"
    sources = sorted(k[len(prefix) : -len("_nominal")] for k in keys if k.startswith(prefix))
    if not sources:
        log.warning("measurement: %s: nature stream without its sources, not factorised", name)
        return None
    rows = np.searchsorted(fz.LOOSE_EDGES, np.asarray(ETA_EDGES[:-1]) - 1e-9)
    total = np.zeros(nature[name].values().shape)
    total_var = np.zeros_like(total)
    filled = np.zeros_like(total)
    used: dict[str, float] = {}
    for source in sources:
        h = f[f"{prefix}{source}_nominal"].to_hist() * scale
        values, variances = h.values(), h.variances()
        own = np.add.reduceat(values[rows[0] :], rows - rows[0], axis=0)
        own_var = np.add.reduceat(variances[rows[0] :], rows - rows[0], axis=0)
        filled += own
        if f"{name}_{source}" not in shapes:
            total += own
            total_var += own_var
            continue
        cut, fractions = shapes[f"{name}_{source}"]
        above = fz.LOOSE_EDGES[:-1] >= cut - 1e-9
        total += values[above].sum(axis=0) * fractions
        total_var += variances[above].sum(axis=0) * fractions**2
        used[source] = cut
    if not math.isclose(filled.sum(), nature[name].values().sum(), rel_tol=1e-6, abs_tol=1e-9):
        raise InputError(f"{name}: the nature stream's sources do not add up to it")
    h = nature[name].copy()
    h.view().value = total
    h.view().variance = total_var
    nature[name] = h
    return used


def _factorised(
    values: np.ndarray,
    variances: np.ndarray,
    spec: Mapping[str, Any],
    seed: int,
    replicas: bool = True,
    cut: float | None = None,
    correction: Any = None,
) -> Any:
    """One loose histogram factorised as ``measurement.factorise`` says.

    The loose cut is ``loose_eta``, or the first of ``looser_eta`` whose region holds
    ``min_loose_effective`` effective events (:func:`knunu.fits.factorise.loose_cut`); ``cut``
    holds it (a variation is fitted above its nominal's cut). ``correction``: the histogram's
    closure correction.
    """
    from knunu.fits.factorise import MIN_EFFECTIVE, factorise
    from knunu.processors.ita import ETA_EDGES

    cuts = (cut,) if cut is not None else (spec["loose_eta"], *spec.get("looser_eta", ()))
    return factorise(
        values,
        variances,
        np.asarray(ETA_EDGES),
        tuple(float(c) for c in cuts),
        int(spec["replicas"]) if replicas else 0,
        seed,
        min_effective=float(spec.get("min_loose_effective", MIN_EFFECTIVE)),
        correction=correction,
    )


def _factorise(
    loose: Mapping[str, Mapping[str, Mapping[str, Any]]],
    written: dict[str, Any],
    spec: Mapping[str, Any] | None,
    seed: int,
    corrections: Mapping[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[float, np.ndarray]]]:
    """Replace the configured ITA templates by factorised ones (see :func:`measurement_histograms`).

    ``loose``: the loose histograms (:func:`_loose_histograms`). A variation whose loose
    histogram is too thin to fit (:data:`~knunu.fits.factorise.MIN_EFFECTIVE`) takes the
    factorised nominal scaled per q2rec bin by its loose events over the nominal's, so no
    variation of a factorised template stays filled event by event.

    Returns:
        Per ``{histogram}_{sample}``: the loose effective events, the fitted slope, the
        closure against the filled template (signal region) and one step down (eta 0.6-0.8);
        and its loose cut with the nominal's eta fractions (fit bins x q2rec, per event above
        the cut in each q2rec bin).
    """
    done: dict[str, dict[str, Any]] = {}
    shapes: dict[str, tuple[float, np.ndarray]] = {}
    for name, samples in loose.items():
        for sample, hists in samples.items():
            how = (spec, seed, corrections.get(name))
            made = _factorise_template(written, f"{name}_{sample}", hists, how)
            if made is not None:
                done[f"{name}_{sample}"], shapes[f"{name}_{sample}"] = made
    return done, shapes


def _factorise_template(
    written: dict[str, Any],
    template: str,
    loose: Mapping[str, Any],
    how: tuple[Mapping[str, Any], int, Any],
) -> tuple[dict[str, Any], tuple[float, np.ndarray]] | None:
    """One template factorised, every variation (``loose``: its loose histograms by variation).

    Returns:
        Its closure tests (:func:`_factorise`), its loose cut and eta fractions; ``None`` when
        too few loose events (the filled templates stay).
    """
    from knunu.fits import factorise as fz

    spec, seed, correction = how
    nominal = loose["nominal"]
    result = _factorised(nominal.values(), nominal.variances(), spec, seed, correction=correction)
    if result is None:
        return None
    filled = written[f"{template}_nominal"]
    for variation, h in loose.items():
        key = f"{template}_{variation}"
        if key not in written:
            continue
        if variation == "nominal":
            written[key] = _factorised_nominal(written, template, result)
        else:
            written[key] = _factorised_variation(written[key], h.view(), result, nominal, how)
    close = fz.closure(filled.values(), result.values, result.variances, result.mean_weight)
    side = fz.sideband_closure(nominal.values(), nominal.variances())
    summary = {
        "loose_eta": result.loose,
        "loose_effective": result.loose_effective,
        "slope": result.slope,
        "closure": close._asdict(),
        "sideband_closure": side._asdict(),
        "components": 0 if result.components is None else len(result.components),
        # per eta row (all q2rec bins): filled, its MC variance, factorised
        "rows": [
            filled.values().sum(axis=1).tolist(),
            filled.variances().sum(axis=1).tolist(),
            result.values.sum(axis=1).tolist(),
        ],
    }
    n = nominal.values()[fz.LOOSE_EDGES[:-1] >= result.loose - 1e-9].sum(axis=0)
    fractions = np.divide(result.values, n, out=np.zeros_like(result.values), where=n > 0)
    return summary, (result.loose, fractions)


def _factorised_nominal(written: dict[str, Any], template: str, result: Any) -> Any:
    """The factorised nominal of ``template``.

    Its shape systematic's up and down go into ``written`` (``{template}_factorisation_*``),
    and its MC statistical uncertainty as the replicas' principal components, nominal +- each
    (``{template}_mcstat{k}_*``, at least 0).
    """
    key = f"{template}_nominal"
    components = result.components if result.components is not None else ()
    shifts = [
        (f"mcstat{k}_{label}", np.clip(result.values + sign * c, 0.0, None))
        for k, c in enumerate(components)
        for label, sign in (("up", 1.0), ("down", -1.0))
    ]
    for label, alt in (
        ("factorisation_up", result.up),
        ("factorisation_down", result.down),
        *shifts,
    ):
        hv = written[key].copy()
        hv.view().value = alt
        hv.view().variance = result.variances
        written[f"{template}_{label}"] = hv
    h = written[key].copy()
    h.view().variance = result.variances
    h.view().value = result.values
    return h


def _factorised_variation(
    filled: Any, loose: Any, result: Any, nominal: Any, how: tuple[Mapping[str, Any], int, Any]
) -> Any:
    """A systematic variation of a factorised template, with the filled one's variances.

    Factorised from its own loose histogram (``loose``, a view), or, too thin to fit, the
    factorised nominal ``result`` scaled per q2rec bin by its loose events over the nominal's.
    ``how`` is (``measurement.factorise``, seed, the closure correction).
    """
    from knunu.fits import factorise as fz

    spec, seed, correction = how
    h = filled.copy()
    made = _factorised(
        loose.value, loose.variance, spec, seed, False, result.loose, correction=correction
    )
    if made is None:
        rows = fz.LOOSE_EDGES[:-1] >= result.loose - 1e-9
        base = nominal.values()[rows].sum(axis=0)
        ratio = np.divide(
            loose.value[rows].sum(axis=0), base, out=np.ones_like(base), where=base > 0
        )
        h.view().value = result.values * ratio[None, :]
    else:
        h.view().value = made.values
    h.view().variance = filled.variances()
    return h


def _sr(name: str, values: np.ndarray) -> np.ndarray:
    rows = SR_CHANNELS[name]
    return values.ravel() if rows is None else values[list(rows), :].ravel()


def _effective(name: str, sample: str, h: Any) -> McStatistics:
    v, var = _sr(name, h.values()), _sr(name, h.variances())
    eff = float(v.sum() ** 2 / var.sum()) if var.sum() > 0 else 0.0
    return McStatistics(name, sample, float(v.sum()), eff)


def _mc_statistics(name: str, written: dict[str, Any], nature: Any) -> list[McStatistics]:
    from knunu.samples import SIGNAL

    rows = [_effective(name, s, written[f"{name}_{s}_nominal"]) for s in _samples_of(name)]
    background = [s for s in _samples_of(name) if s != SIGNAL]
    v = sum(_sr(name, written[f"{name}_{s}_nominal"].values()) for s in background)
    var = sum(_sr(name, written[f"{name}_{s}_nominal"].variances()) for s in background)
    per_bin = np.divide(v**2, var, out=np.zeros_like(v), where=var > 0)
    # expected background events in the data per bin: the templates' own (MC) expectation
    ratio = np.divide(per_bin, v, out=np.full_like(v, np.inf), where=v > 0)
    eff = float(v.sum() ** 2 / var.sum()) if var.sum() > 0 else 0.0
    rows.append(McStatistics(name, "background", float(v.sum()), eff, float(ratio.min())))
    return rows


# ---------------------------------------------------------------------------- the fits


def run_measurement(config: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """The measurement of a run: pseudo-data, workspaces, expected (and observed) results.

    Returns:
        The summary written to ``<run>/measurement/summary.json``.

    Raises:
        InputError: the run has no histograms or no nature stream.
    """
    from knunu.fits.build import analyses_in_file, write_workspaces
    from knunu.fits.catalogue import load_catalogue

    run_dir = Path(run_dir)
    out = run_dir / "measurement"
    catalogue = json.loads((run_dir / "ntuples" / "catalogue.json").read_text())["datasets"]
    data_lum = {k: float(catalogue[f"data_{k}"]["luminosity_fb"]) for k in ("on", "off")}
    lum = config["simulation"]["luminosity_fb"]
    target = {"on": float(lum["on_resonance"]), "off": float(lum["off_resonance"])}
    if "nature_on" not in catalogue:  # e.g. the belle2 scale: its pseudo-data are the events
        summary = {
            "skipped": "no nature stream in this production (simulation.scales.<scale>.nature): "
            f"the event-level pseudo-data ({data_lum['on']:.4g} fb^-1) are the measurement"
        }
        write_json(out / "summary.json", summary)
        return summary
    meas = config["measurement"]
    scaled = measurement_histograms(
        run_dir / "histograms.root",
        out / "histograms.root",
        data_lum,
        target,
        config["seed"],
        meas.get("factorise"),
    )
    blind = bool(config.get("blind", True))
    summary = _summary_of(scaled, meas, blind, (target, data_lum))
    analyses = analyses_in_file(scaled.path)
    try:
        paths = write_workspaces(
            scaled.path,
            out / "workspaces",
            load_catalogue() + factorisation_systematics(scaled.factorised or {}),
            config["fit"]["prune_threshold"],
            analyses,
        )
    except KnunuError as exc:  # e.g. every channel of an analysis empty (too little MC)
        log.warning("measurement workspaces not built: %s", exc)
        summary["failed"]["workspaces"] = str(exc)
        write_json(out / "summary.json", summary)
        return summary
    workspace = pyhf.Workspace(json.loads(paths.get("combined", paths[analyses[0]]).read_text()))
    models = [m for m in MODELS if (m == "combined" and "combined" in paths) or m in analyses]
    observed = [_fit_model(workspace, model, config, out, summary) for model in models]
    if not blind:
        summary["observed"] = [d for d in observed if d is not None]
        summary["mu_true"] = float(config["simulation"]["mu_true"])
    if "combined" in paths:
        summary["injection"] = _injection(workspace, meas, config["seed"], out)
    write_json(out / "summary.json", summary)
    return summary


def _summary_of(
    scaled: Scaled,
    meas: Mapping[str, Any],
    blind: bool,
    luminosities: tuple[dict[str, float], dict[str, float]],
) -> dict[str, Any]:
    """The measurement's summary before any fit: luminosities, pseudo-data, MC statistics."""
    target, data_lum = luminosities
    return {
        "blind": blind,
        "luminosity_fb": target,
        "data_luminosity_fb": data_lum,
        "factors": scaled.factors,
        "pseudo_data_events": scaled.pseudo_data,
        "merged_bins": [list(d) for d in scaled.merged],
        "mc_statistics": [m._asdict() for m in scaled.mc],
        "nature_statistics": [m._asdict() for m in scaled.nature],
        "factorised": scaled.factorised or {},
        "nature_factorised": scaled.nature_factorised or {},
        "factorisation_correction": scaled.corrections or {},
        "expected_mu": float(meas["expected_mu"]),
        "injection_toys": int(meas["injection_toys"]),
        "expected": [],
        "breakdown": {},
        "fit_quality": {},
        "observed": None,
        "failed": {},
    }


def _fit_model(
    workspace: pyhf.Workspace,
    model: str,
    config: dict[str, Any],
    out: Path,
    summary: dict[str, Any],
) -> dict[str, Any] | None:
    """One model's expected result and fit quality into ``summary``; its observed one, if any.

    A model that fails is named in ``summary["failed"]`` (the others go on).
    """
    meas = config["measurement"]
    try:
        lh = _likelihood(workspace, model)
        result, summary["breakdown"][model] = _expected(lh, model, meas, config, out)
        summary["expected"].append(asdict(result))
        if model in config["fit"]["gof_analyses"]:
            summary["fit_quality"][model] = _fit_quality(lh, meas["gof_toys"], config["seed"])
        if not summary["blind"]:
            return asdict(_observed(lh, model, config, out))
    except KnunuError as exc:
        log.warning("measurement %s failed: %s", model, exc)
        summary["failed"][model] = str(exc)
    return None


def factorisation_systematics(factorised: Mapping[str, Any]) -> tuple[Any, ...]:
    """The factorised ITA templates' parameters: their shape, and their MC statistics.

    The shape: one parameter for every sample and channel. The closure correction and its
    size are measured on the sum of the samples on and off resonance
    (:func:`knunu.fits.factorise.sideband_correction`), so the parameter is shared (a row per
    histogram, on the samples factorised there). The MC statistics: a parameter per principal
    component of each template's replicas (``components`` of its entry), which replaces the
    template's staterror.

    >>> done = {"ita_on_ccbar": {"components": 2}, "ita_on_mixed": {}, "ita_off_ccbar": {}}
    >>> [(s.name, s.samples["ita"], s.channels) for s in factorisation_systematics(done)]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('factorisation', ('ccbar', 'mixed'), ('ita_on_sr', 'ita_on_cr')),
     ('factorisation', ('ccbar',), ('ita_off_sr', 'ita_off_cr')),
     ('mcstat_on_ccbar_0', ('ccbar',), ('ita_on_sr', 'ita_on_cr')),
     ('mcstat_on_ccbar_1', ('ccbar',), ('ita_on_sr', 'ita_on_cr'))]
    """
    from knunu.fits.catalogue import Systematic

    samples: dict[str, list[str]] = {}
    mcstat = []
    for key, d in factorised.items():
        name = "ita_off" if key.startswith("ita_off_") else "ita_on"
        sample = key[len(name) + 1 :]
        samples.setdefault(name, []).append(sample)
        channels = (f"{name}_sr", f"{name}_cr")
        mcstat += [
            Systematic(
                f"mcstat_{name[4:]}_{sample}_{k}",
                "histosys",
                False,
                {"ita": (sample,)},
                variation=f"mcstat{k}",
                channels=channels,
                mc_statistics=True,
            )
            for k in range(int(d.get("components", 0)))
        ]
    shape = tuple(
        Systematic(
            "factorisation",
            "histosys",
            False,
            {"ita": tuple(s)},
            variation="factorisation",
            channels=(f"{name}_sr", f"{name}_cr"),
        )
        for name, s in samples.items()
    )
    return (*shape, *mcstat)


def _likelihood(workspace: pyhf.Workspace, model: str) -> Any:
    from knunu.fits.infer import Likelihood
    from knunu.fits.validation import poi_range, with_poi_bounds
    from knunu.fits.workspace import select

    ws = select(workspace, model)
    spec = {
        "channels": ws["channels"],
        "observations": ws["observations"],
        "measurements": ws["measurements"],
        "version": ws["version"],
    }
    bounded = with_poi_bounds(spec, poi_range(spec, POI_BOUNDS))
    return Likelihood.from_workspace(pyhf.Workspace(bounded))


def _expected(
    lh: Any, model: str, meas: dict[str, Any], config: dict[str, Any], out: Path
) -> tuple[Any, Any]:
    """Expected results and what their sigma(mu) is made of.

    Asimov data of the nominal model at ``expected_mu``; the breakdown by
    :func:`knunu.fits.breakdown.breakdown`.
    """
    from knunu.fits.breakdown import breakdown
    from knunu.fits.build import load_bins
    from knunu.fits.report import analyse, write_plots
    from knunu.fits.validation import nominal_point

    asimov = lh.with_data(lh.expected_data(nominal_point(lh, float(meas["expected_mu"]))))
    impacts = model == "combined" and bool(meas.get("impacts", True))
    inference = analyse(asimov, model, config["fit"]["cls_level"], with_impacts=impacts)
    bins = load_bins(out / "workspaces" / "combined.json")
    write_plots(asimov, inference, out / "plots" / "expected" / model, bins=bins)
    try:
        parts = breakdown(asimov, inference.best.x, inference.best.fixed)
    except FitError as exc:  # the expected result stands; only its breakdown is missing
        log.warning("measurement %s: no breakdown of sigma(mu): %s", model, exc)
        return inference.result, {"error": str(exc)}
    shares = [s._asdict() for s in parts.shares]
    return inference.result, {"sigma": parts.sigma, "stat": parts.stat, "shares": shares}


def _fit_quality(lh: Any, toys: int, seed: int) -> dict[str, Any]:
    """Goodness of fit of the pseudo-data (saturated model): the p-value only, no mu."""
    from knunu.fits.infer import goodness_of_fit

    if toys <= 0:
        return {"p_value": None, "toys": 0, "failed": 0}
    try:
        gof = goodness_of_fit(lh, lh.fit(), toys, seed)
    except KnunuError as exc:  # the fit quality cannot be judged: said, not fatal
        log.warning("measurement goodness of fit failed: %s", exc)
        return {"p_value": None, "toys": toys, "failed": None, "error": str(exc)}
    return {"p_value": gof.p_value, "toys": toys, "failed": len(gof.failed)}


def _observed(lh: Any, model: str, config: dict[str, Any], out: Path) -> Any:
    from knunu.fits.build import load_bins
    from knunu.fits.report import analyse, write_plots

    impacts = model == "combined" and bool(config["measurement"].get("impacts", True))
    inference = analyse(lh, model, config["fit"]["cls_level"], with_impacts=impacts)
    bins = load_bins(out / "workspaces" / "combined.json")
    write_plots(lh, inference, out / "plots" / "observed" / model, bins=bins)
    return inference.result


def _injection(
    workspace: pyhf.Workspace, meas: dict[str, Any], seed: int, out: Path
) -> dict[str, Any]:
    """Signal injection with the measurement's templates (combined model)."""
    from knunu.fits import plots
    from knunu.fits.validation import injection

    try:
        inj = injection(
            _likelihood(workspace, "combined"),
            meas["injection_mu"],
            int(meas["injection_toys"]),
            seed,
        )
    except KnunuError as exc:
        log.warning("measurement injection failed: %s", exc)
        return {"error": str(exc)}
    save_figure(plots.injection(inj), out / "plots" / "injection.png")
    return inj._asdict()


# ---------------------------------------------------------------------------- text


def headline_lines(summary: dict[str, Any]) -> list[str]:
    """The measurement's headline: expected results while blind, observed after unblinding."""
    if "skipped" in summary:
        return [f"Measurement at Belle II's luminosity: {summary['skipped']}"]
    lum = summary["luminosity_fb"]
    where = f"{lum['on']:g} fb^-1 on and {lum['off']:g} fb^-1 off resonance"
    table = _blind_table if summary["blind"] else _observed_table
    lines = table(summary, where)
    lines += [f"| {model} | FAILED: {why} |" for model, why in summary["failed"].items()]
    lines.append("")
    for d in summary.get("observed") or ():
        if d.get("impacts_failed"):
            lines.append(
                f"{d['analysis']} (observed): impacts left out, their refits did not converge: "
                + ", ".join(d["impacts_failed"])
            )
    lines.append(_mc_statistics_line(summary))
    lines += _breakdown_lines(summary)
    lines += _template_lines(summary)
    combined = {r["analysis"]: r for r in summary["expected"]}.get("combined")
    if combined and combined.get("impacts"):
        lines.append(
            "largest expected impacts on mu (combined): "
            + ", ".join(f"{n} {max(abs(u), abs(d)):.2f}" for n, u, d in combined["impacts"][:6])
        )
    if combined and combined.get("impacts_failed"):
        lines.append(
            "impacts left out (their refits did not converge): "
            + ", ".join(combined["impacts_failed"])
        )
    return lines


def _blind_table(summary: dict[str, Any], where: str) -> list[str]:
    """The expected results, one row per model, with the fit quality on the pseudo-data."""
    lines = [
        f"Measurement at {where} (histogram-level pseudo-data from the nature stream): "
        "BLINDED. Expected results (Asimov at mu = "
        f"{summary['expected_mu']:g}, the published value); unblind with "
        "`knunu run --unblind`.",
        "",
        "| model | exp. sigma(mu) | stat | syst | MINOS | exp. Z vs 0 | exp. Z vs SM "
        "| fit quality p (pseudo-data) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["expected"]:
        q = summary["fit_quality"].get(r["analysis"], {})
        p = q.get("p_value")
        quality = "-" if p is None else f"{p:.2f} ({q['toys']} toys)"
        quality = f"FAILED ({q['error']})" if "error" in q else quality
        lines.append(
            f"| {r['analysis']} | {r['mu_hesse']:.2f} | {r['stat']:.2f} | {r['syst']:.2f} | "
            f"{r['minos_down']:+.2f} / {r['minos_up']:+.2f} | {r['z_bkg']:.2f} | "
            f"{r['z_sm']:.2f} | {quality} |"
        )
    return lines


def _observed_table(summary: dict[str, Any], where: str) -> list[str]:
    """The observed results against the injected mu_true, one row per model."""
    from knunu.fits.report import AnalysisResult, limit_text

    mu_true = summary["mu_true"]
    expected = {r["analysis"]: r for r in summary["expected"]}
    lines = [
        f"Measurement at {where} (histogram-level pseudo-data from the nature stream): "
        f"UNBLINDED; injected mu_true = {mu_true:g}",
        "",
        "| model | mu_true | mu | stat | syst | MINOS | B (1e-5) | Z vs 0 | Z vs SM | UL "
        "| (mu - mu_true)/sigma | exp. sigma(mu) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in summary["observed"]:
        r = AnalysisResult(
            **{
                **d,
                "impacts": tuple(d["impacts"]),
                "pulls": tuple(d["pulls"]),
                "impacts_failed": tuple(d.get("impacts_failed", ())),
            }
        )
        pull = (r.mu - mu_true) / r.mu_hesse if r.mu_hesse > 0 else math.nan
        exp = expected.get(r.analysis, {}).get("mu_hesse", math.nan)
        lines.append(
            f"| {r.analysis} | {mu_true:g} | {r.mu:.2f} | {r.stat:.2f} | {r.syst:.2f} | "
            f"{r.minos_down:+.2f} / {r.minos_up:+.2f} | {r.branching_fraction * 1e5:.2f} | "
            f"{r.z_bkg:.2f} | {r.z_sm:.2f} | {limit_text(r)} | {pull:+.2f} | {exp:.2f} |"
        )
    return lines


def _mc_statistics_line(summary: dict[str, Any]) -> str:
    """Effective MC events of the signal regions' templates and of the nature stream."""
    mc = {(m["histogram"], m["sample"]): m for m in summary["mc_statistics"]}
    bkg = [m for m in summary["mc_statistics"] if m["sample"] == "background"]
    return (
        "MC statistics in the signal regions (effective events (sum w)^2/sum w^2, of the "
        "factorised templates from their replicas' errors; the fit carries them as staterror, "
        "the factorised templates' as their replicas' principal components): "
        + "; ".join(
            f"{m['histogram']} background {m['effective']:.0f} effective for "
            f"{m['expected']:.0f} expected (worst bin {m['min_ratio']:.3f} x the data)"
            for m in bkg
        )
        + "; signal "
        + ", ".join(
            f"{h} {mc[(h, 'signal')]['effective']:.0f}"
            for h in ("ita_on", "hta")
            if (h, "signal") in mc
        )
        + "; nature stream "
        + ", ".join(f"{m['histogram']} {m['effective']:.0f}" for m in summary["nature_statistics"])
    )


def _breakdown_lines(summary: dict[str, Any]) -> list[str]:
    """Per model, the largest shares of the expected sigma(mu).

    A share is what knowing the group exactly would take off sigma(mu) in quadrature.
    """
    lines = []
    for model, d in (summary.get("breakdown") or {}).items():
        if "error" in d:
            lines.append(f"expected sigma(mu) {model}: no breakdown ({d['error']})")
            continue
        lines.append(
            f"expected sigma(mu) {model} {d['sigma']:.2f} = stat {d['stat']:.2f} (+) "
            "shares of what limits it (sqrt(sigma^2 - sigma^2 with the group fixed)): "
            + ", ".join(f"{s['group']} {s['share']:.2f}" for s in d["shares"][:4])
        )
    return lines


def _template_lines(summary: dict[str, Any]) -> list[str]:
    """The factorisation's closure, bins merged for want of MC, and the signal injection."""
    from knunu.fits.validation import at_bound_text

    lines = []
    factorised = summary.get("factorised") or {}
    if factorised:
        lines.append(
            "ITA templates factorised from a looser eta cut (loose effective MC events above "
            "the cut; closure chi2/ndf against the filled template in the signal region, and "
            "one step down, fitted on eta 0.6-0.8, in eta 0.72-0.8): "
            + "; ".join(
                f"{key} {d['loose_effective']:.0f} above {d['loose_eta']:.2f} "
                f"({d['closure']['chi2']:.1f}/"
                f"{d['closure']['ndf']}, {d['sideband_closure']['chi2']:.1f}/"
                f"{d['sideband_closure']['ndf']})"
                for key, d in factorised.items()
            )
        )
    if summary["merged_bins"]:
        n = sum(d[2] for d in summary["merged_bins"])
        lines.append(
            f"{len(summary['merged_bins'])} bin(s) with {n:.0f} pseudo-data events and no "
            "template MC, merged into the bin before (MC statistics too small for the binning)"
        )
    inj = summary.get("injection") or {}
    if "slope" in inj:
        lines.append(
            f"signal injection with these templates (combined, injected mu "
            f"{', '.join(f'{m:g}' for m in inj['mu_true'])}, {summary['injection_toys']} "
            f"toys each): slope {inj['slope']:.3f} +- {inj['slope_error']:.3f}, intercept "
            f"{inj['intercept']:+.3f} +- {inj['intercept_error']:.3f}, chi2/ndf "
            f"{inj['chi2']:.1f}/{inj['ndf']}" + at_bound_text(inj.get("at_bound", ()))
        )
    elif "error" in inj:
        lines.append(f"signal injection: FAILED ({inj['error']})")
    return lines
