"""The HTA: hadronic-tag selection, the BDTh histograms with their variations, the SR event list.

Selection (``hta.selection``, ../shared/notes/physics.md): among the tag candidates ``Btag_*``
of a charged B with Mbc > 5.27 GeV and Delta E in the window, the one with the highest signal
probability; exactly one further track (the signal kaon) passing kaon ID and the
impact-parameter cuts, with charge opposite to the tag B.

``HTAProcessor.process`` returns per dataset:

- ``hta``: variation x eta(BDTh) in 6 bins of equal signal above 0.4 (the fit layout);
- ``hta_control``: eta(BDTh) 0-1 in 20 bins, nominal only;
- ``hta_reuse`` (MC with library-entry truth, not the nature stream): the nominal weights summed
  per (library entry, bin) of ``hta`` (:class:`~knunu.processors.reuse.EntrySums`);
- ``q2gen`` (signal MC only): q2gen of the signal-region events, MC weights and corrections;
- ``cutflow`` / ``cutflow_unweighted``;
- ``sr_events``: the set of (experiment, run, event, HTA weight) in the signal region (nominal),
  which the ITA processor uses to remove the overlap.

Weight and correction variations are the ITA's (:mod:`knunu.processors.variations`, same
truth codes and names for the correlated ones; the K_L efficiency re-corrects the uncorrected
inputs); the HTA adds the extra-energy scale as an input variation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import awkward as ak
import hist
import numpy as np
from coffea import processor

from knunu.mva.bdt import KFoldBDT
from knunu.mva.corrections import corrected_hta_inputs, dataset_norm, nominal_mc
from knunu.mva.eta import EtaTransform
from knunu.mva.train import bdtc_weight
from knunu.processors.reuse import ENTRIES, entry_sums, flat_bins, groups
from knunu.processors.run import dataset_kind
from knunu.processors.selection import (
    BOOKKEEPING,
    Q2GEN_BINS,
    Q2GEN_MAP_EDGES,
    TRUTH,
    cumulative,
    cutflow_histograms,
    map_q2gen,
)
from knunu.processors.variations import (
    CORRECTION_VARIATIONS,
    HTA_INPUT_VARIATIONS,
    WEIGHT_VARIATIONS,
    Context,
)
from knunu.simulation.reconstruction import HTA_TRUTH_COLUMNS

#: Catalogue sample -> HTA fit sample (tau pairs, 3 % of the HTA continuum, go with uds).
HTA_SAMPLE = {
    "signal": "signal",
    "charged": "bbbar",
    "mixed": "bbbar",
    "uubar": "uds",
    "ddbar": "uds",
    "ssbar": "uds",
    "taupair": "uds",
    "ccbar": "ccbar",
    "data": "data",
    "nature": "nature",
}
CONTINUUM = ("uds", "ccbar")
#: Model files of the HTA training.
HTA_MODEL_FILES = {"bdth": "bdth.json", "eta": "eta_h.json", "continuum": "hta_continuum.json"}
STEPS = ("all", "tag", "one signal track", "kaon", "opposite charge", "signal region")
#: MC truth the HTA variations read (absent from data): the ITA's but the process code and the
#: photon energy, and the HTA tree's own.
HTA_TRUTH = (*(t for t in TRUTH if t not in ("mcProcess", "mcE_photon")), *HTA_TRUTH_COLUMNS)
#: Inputs the MC corrections move (:class:`~knunu.mva.corrections.HTAShift`).
HTA_CORRECTED = ("E_extra", "nExtraClusters", "E_miss_all", "m2_miss_all", "E_miss", "nClusters")
#: Weight variations shared with the ITA (the catalogue's HTA rows).
HTA_WEIGHT_VARIATIONS = (
    "br_c1",
    "br_c2",
    "br_c3",
    "dstarstar_l_nu",
    "k_kl_kl",
    "k_n_nbar",
    "d_to_kl",
    "kaon_id_c1",
    "kaon_id_c2",
    "tracking",
    "ff_c1",
    "ff_c2",
    "ff_c3",
    "bdtc",
)
HTA_VARIATIONS = (
    *HTA_WEIGHT_VARIATIONS,
    *HTA_INPUT_VARIATIONS,
    "extra_energy",
    *CORRECTION_VARIATIONS,
)
HIST_VARIATIONS = ("nominal", *(f"{v}_{d}" for v in HTA_VARIATIONS for d in ("up", "down")))


class HTASelected(NamedTuple):
    """One chunk after the HTA selection: cumulative step masks and the kept events' columns."""

    steps: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]


def select_hta(events: ak.Array, cuts: Mapping[str, Any], names: Sequence[str]) -> HTASelected:
    """Apply the HTA selection; ``Btag_x`` columns come from the chosen tag.

    Args:
        events: NanoEvents of the ``hta`` tree (tag candidates in ``events.Btag``).
        cuts: The ``hta.selection`` block.
        names: Columns to return (missing ones, truth in data, are skipped).
    """
    tags = events.Btag
    lo, hi = cuts["delta_e"]
    ok = (
        (tags.mbc > cuts["mbc_min"])
        & (tags.deltaE > lo)
        & (tags.deltaE < hi)
        & (abs(tags.charge) == 1)
    )
    # the best tag: highest signal probability among the candidates in the window
    prob = ak.where(ok, tags.sigProb, -1.0)
    best = ak.argmax(prob, axis=1, keepdims=True)  # None where an event has no tag
    chosen = ak.firsts(tags[best])
    has_tag = ak.to_numpy(ak.fill_none(ak.firsts(prob[best]) >= 0, False))
    tag_charge = ak.to_numpy(ak.fill_none(chosen.charge, 0))
    n_sig = ak.to_numpy(events.nSignalTracks)
    kaon = (
        (ak.to_numpy(events.Ksig_kaonID) > cuts["kaon_id_min"])
        & (ak.to_numpy(events.Ksig_dr) < cuts["dr_max_cm"])
        & (np.abs(ak.to_numpy(events.Ksig_dz)) < cuts["dz_max_cm"])
    )
    masks = (
        np.ones(len(n_sig), dtype=bool),
        has_tag,
        n_sig == cuts["signal_tracks"],
        kaon,
        ak.to_numpy(events.Ksig_charge) * tag_charge < 0,
    )
    steps = cumulative(STEPS[:-1], masks)
    passed = steps[STEPS[-2]]
    fields, tag_fields = set(events.fields), set(tags.fields)
    columns: dict[str, np.ndarray] = {}
    for name in names:
        if name.startswith("Btag_"):
            if name[5:] in tag_fields:
                columns[name] = ak.to_numpy(chosen[name[5:]])[passed]
        elif name in fields:
            columns[name] = ak.to_numpy(events[name])[passed]
    if "Ksig_mcPDG" in columns:  # the name the shared kaon-ID variations read
        columns["K_mcPDG"] = columns["Ksig_mcPDG"]
    return HTASelected(steps, columns)


class HTAModels(NamedTuple):
    """The trained HTA models (the continuum classifier may be absent: too little data)."""

    bdth: KFoldBDT
    eta: EtaTransform
    continuum: KFoldBDT | None


@lru_cache(maxsize=4)
def load_hta_models(folder: str) -> HTAModels:
    """Load (once per process) the HTA model files of a training folder."""
    path = Path(folder)
    cont = path / HTA_MODEL_FILES["continuum"]
    return HTAModels(
        KFoldBDT.load(path / HTA_MODEL_FILES["bdth"]),
        EtaTransform.load(path / HTA_MODEL_FILES["eta"]),
        KFoldBDT.load(cont) if cont.exists() else None,
    )


def hta_names(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Every column the HTA reads: bookkeeping, truth, BDTh and continuum inputs."""
    return tuple(
        dict.fromkeys(
            [
                "__experiment__",
                *BOOKKEEPING,
                *HTA_TRUTH,
                "nTracks",
                *HTA_CORRECTED,
                *cfg["features"]["bdth"],
                *cfg["features"]["continuum"],
            ]
        )
    )


def continuum_weight(
    models: HTAModels, cols: Mapping[str, np.ndarray], clip: Sequence[float]
) -> np.ndarray:
    """The HTA continuum correction p/(1-p) of each event (1 without a classifier)."""
    if models.continuum is None or not len(cols["__event__"]):
        return np.ones(len(cols["__event__"]))
    p = models.continuum.score(cols)
    return bdtc_weight(p, (float(clip[0]), float(clip[1])))


class HTAProcessor(processor.ProcessorABC):
    """HTA histograms for the fit, with the systematic variations, per dataset."""

    def __init__(self, models: str | Path, cfg: Mapping[str, Any]) -> None:
        self.models = str(models)
        self.cfg = dict(cfg)
        self.names = hta_names(cfg)
        #: read where the files have them (knunu's MC): MC errors that know library reuse
        self.optional = ENTRIES

    def process(self, events: ak.Array) -> dict[str, Any]:
        """Select, score and histogram one chunk."""
        dataset = events.metadata["dataset"]
        kind, is_data = dataset_kind(dataset)
        sample = HTA_SAMPLE[kind]
        models = load_hta_models(self.models)
        cfg = self.cfg
        sel = select_hta(events, cfg["selection"], (*self.names, *self.optional))
        cols = raw = sel.columns
        weight = cols["__weight__"].astype(np.float64)
        if not is_data:
            norm = dataset_norm(cfg, dataset)
            weight, cols = nominal_mc(cols, cfg["corrections"], corrected_hta_inputs, norm)
        bdth = models.bdth.score(cols)
        eta = models.eta(bdth)
        cont = np.ones(len(weight))
        if sample in CONTINUUM:
            cont = continuum_weight(models, cols, cfg["continuum_clip"])
        w_nom = weight * cont
        edges = tuple(cfg["eta_edges"])
        fit = hist.Hist(
            hist.axis.StrCategory(list(HIST_VARIATIONS), name="variation"),
            hist.axis.Variable(edges, name="eta", label="eta(BDTh)"),
            storage=hist.storage.Weight(),
        )
        fit.fill(variation="nominal", eta=eta, weight=w_nom)
        extra = {}
        shared = [] if is_data or sample == "nature" else groups(cols)
        if shared:
            flat = flat_bins(fit.axes[1:], eta)
            extra["hta_reuse"] = entry_sums(shared, flat, len(edges) - 1, w_nom)
        if not is_data:
            ctx = Context.of(sample, cont, cfg, dataset)
            _fill_variations(fit, models, cfg, ctx, (raw, cols), bdth, eta, weight)
        control = hist.Hist(
            hist.axis.Regular(20, 0.0, 1.0, name="eta", label="eta(BDTh)"),
            storage=hist.storage.Weight(),
        )
        control.fill(eta=eta, weight=w_nom)
        in_sr = eta > edges[0]
        if sample == "signal" and not is_data:
            extra |= _q2gen_hists(cols["q2gen"], eta, in_sr, w_nom, edges)
        mc_weight = ak.to_numpy(events["__weight__"]).astype(np.float64)
        cutflow, unweighted = cutflow_histograms(sel.steps, {STEPS[-1]: in_sr}, mc_weight)
        return {
            dataset: {
                "events": len(events),
                "chunks": 1,
                "hta": fit,
                "hta_control": control,
                **extra,
                "cutflow": cutflow,
                "cutflow_unweighted": unweighted,
                "sr_events": _sr_events(cols, in_sr),
            }
        }

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Nothing to do after merging."""
        return accumulator


def _q2gen_hists(
    q2gen: np.ndarray,
    eta: np.ndarray,
    in_sr: np.ndarray,
    weight: np.ndarray,
    edges: tuple[float, ...],
) -> dict[str, hist.Hist]:
    """Signal MC by q2gen: in the signal region (``q2gen``) and per fit bin (``map``)."""
    h = hist.Hist(
        hist.axis.Regular(*Q2GEN_BINS, name="q2gen", label="q2gen [GeV^2]"),
        storage=hist.storage.Weight(),
    )
    h.fill(q2gen=q2gen[in_sr], weight=weight[in_sr])
    qmap = hist.Hist(  # the reinterpretation map: the fit template by q2gen
        hist.axis.Variable(edges, name="eta", label="eta(BDTh)"),
        hist.axis.Variable(Q2GEN_MAP_EDGES, name="q2gen", label="q2gen [GeV^2]"),
        storage=hist.storage.Weight(),
    )
    qmap.fill(eta=eta, q2gen=map_q2gen(q2gen), weight=weight)
    return {"q2gen": h, "map": qmap}


def _sr_events(cols: Mapping[str, np.ndarray], in_sr: np.ndarray) -> set[tuple]:
    """(experiment, run, event, HTA weight) of the signal-region events: the overlap removal.

    The HTA weight of MC includes the tag probability p/q.
    """
    keys = zip(
        cols["__experiment__"][in_sr].tolist(),
        cols["__run__"][in_sr].tolist(),
        cols["__event__"][in_sr].tolist(),
        cols["__weight__"][in_sr].tolist(),
        strict=True,
    )
    return set(keys)


def _fill_variations(
    fit: hist.Hist,
    models: HTAModels,
    cfg: Mapping[str, Any],
    ctx: Context,
    columns: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
    bdth: np.ndarray,
    eta: np.ndarray,
    weight: np.ndarray,
) -> None:
    """Fill the systematic variations of an MC chunk: weights, then shifted inputs re-scored.

    ``columns`` are the events' before and after the MC corrections; ``bdth`` and ``eta``
    the nominal scores; ``weight`` is the event weight; ``ctx.bdtc`` the continuum correction
    (1 outside continuum) of the nominal fill.
    """
    raw, cols = columns
    w_nom = weight * ctx.bdtc
    for name in HTA_WEIGHT_VARIATIONS:
        up, down = WEIGHT_VARIATIONS[name](cols, ctx)
        for label, f in (("up", up), ("down", down)):
            fit.fill(variation=f"{name}_{label}", eta=eta, weight=w_nom * f)
    delta = float(cfg["extra_energy_scale"])
    shifted = {
        f"{name}_{label}": shift(cols)
        for name, shifts in HTA_INPUT_VARIATIONS.items()
        for label, shift in zip(("up", "down"), shifts, strict=True)
    }
    for label, scale in (("up", 1 + delta), ("down", 1 - delta)):
        shifted[f"extra_energy_{label}"] = {**cols, "E_extra": cols["E_extra"] * scale}
    for name, moved in CORRECTION_VARIATIONS.items():  # the K_L efficiency: clusters migrate
        for label, sign in (("up", 1.0), ("down", -1.0)):
            corrections = moved.corrections(cfg["corrections"], sign)
            shifted[f"{name}_{label}"] = corrected_hta_inputs(raw, corrections)
    for variation, varied in shifted.items():
        s = models.bdth.rescore(bdth, cols, varied)
        w = w_nom  # the continuum correction follows its shifted inputs, as the ITA's
        if ctx.sample in CONTINUUM:
            w = weight * continuum_weight(models, varied, cfg["continuum_clip"])
        fit.fill(variation=variation, eta=models.eta(s), weight=w)
