"""The ITA processor: selection, BDT1/BDT2/eta/BDTc and the fit histograms with every variation.

Stateless: the constructor holds the ``ita`` configuration and the model folder only; models
load lazily on the worker (cached per process). ``process`` returns, per dataset, plain
``hist.Hist`` objects with Weight storage and the cutflow:

- ``ita``: variation x eta(BDT2) {0.92, ..., 1.00} x q2rec {-1, 4, 8, 25} GeV^2 (the fit layout);
- ``ita_loose``: variation x eta 0.5-1 (50 bins) x the fit's q2rec bins (the factorised
  templates of the measurement, :mod:`knunu.fits.factorise`);
- ``ita_reuse`` / ``ita_loose_reuse`` (MC with library-entry truth, not the nature stream):
  the nominal weights summed per (library entry, bin) of ``ita`` and ``ita_loose``
  (:class:`~knunu.processors.reuse.EntrySums`, not a ``hist``: it merges in O(n log n)), for
  MC errors that know an entry is reused (:mod:`knunu.processors.reuse`);
- ``nature_sources`` (the nature stream only): source sample x eta 0.5-1 x q2rec, nominal
  (its signal-region expectation, factorised per source like the templates);
- ``ita_control``: eta 0.75-1 x q2rec, nominal only (validation);
- ``ita_split``: the fit layout, nominal only, for the consistency splits (:data:`SPLITS`:
  kaon charge, event-number parity, lepton multiplicity);
- ``q2gen`` (signal MC only): q2gen of the signal-region events with their MC weights and
  corrections, before the overlap removal (signal efficiency versus q2gen);
- ``cutflow`` / ``cutflow_unweighted``: the selection steps, then BDT1 and eta > 0.92.

Weights are the MC weight with the nominal corrections (D -> K_L rate, K_L efficiency, hadronic
energy scale, BDTc for continuum MC); data get weight 1 and the nominal only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import awkward as ak
import hist
import numpy as np
from coffea import processor

from knunu.mva.bdt import COPY_OF, KFoldBDT
from knunu.mva.corrections import corrected_inputs, dataset_norm, nominal_mc
from knunu.mva.eta import EtaTransform
from knunu.mva.train import MODEL_FILES, bdt2_features, bdtc_weight
from knunu.processors.reuse import ENTRIES, entry_sums, flat_bins, groups
from knunu.processors.run import dataset_kind
from knunu.processors.selection import (
    BOOKKEEPING,
    CUTFLOW_STEPS,
    ENERGY,
    Q2GEN_BINS,
    Q2GEN_MAP_EDGES,
    TRUTH,
    cutflow_histograms,
    map_q2gen,
    select,
)
from knunu.processors.variations import (
    CORRECTION_VARIATIONS,
    INPUT_VARIATIONS,
    VARIATIONS,
    WEIGHT_VARIATIONS,
    Context,
)
from knunu.samples import BBBAR, CONTINUUM
from knunu.simulation.bdecays import MODES

ETA_EDGES = (0.92, 0.94, 0.96, 0.98, 1.00)
Q2_EDGES = (-1.0, 4.0, 8.0, 25.0)
SR_ETA = 0.92
STEPS = (*CUTFLOW_STEPS, "BDT1", "eta > 0.92")
HIST_VARIATIONS = ("nominal", *(f"{v}_{d}" for v in VARIATIONS for d in ("up", "down")))
#: Statistically independent halves of every sample: kaon charge, event-number parity and
#: lepton multiplicity (no identified lepton / at least one).
SPLITS = ("kplus", "kminus", "even", "odd", "nolepton", "lepton")


class Models(NamedTuple):
    """The trained ITA models."""

    bdt1: KFoldBDT
    bdt2: KFoldBDT
    bdtc: KFoldBDT
    eta: EtaTransform


@lru_cache(maxsize=4)
def load_overlap(path: str) -> dict[str, tuple[np.ndarray, dict[tuple[int, int, int], float]]]:
    """HTA signal-region events per dataset: (event numbers, {(exp, run, event): HTA weight})."""
    doc = json.loads(Path(path).read_text())
    out = {}
    for dataset, rows in doc["sr_events"].items():
        keys = {(int(e), int(r), int(n)): float(w) for e, r, n, w in rows}
        out[dataset] = (np.unique([k[2] for k in keys]).astype(np.int64), keys)
    return out


def overlap_fraction(
    cols: Mapping[str, np.ndarray], hta: tuple[np.ndarray, Mapping[tuple[int, int, int], float]]
) -> np.ndarray:
    """Per event, the fraction of its weight that belongs to the HTA signal region.

    An event whose (experiment, run, event) is not in the HTA set gets 0. One that is gets its
    HTA weight over its ITA weight: 1 for data; for MC, whose hadronic tags are drawn more often
    than nature's (``hta_tag_boost``, HTA weight = MC weight x p/q), the tag probability p/q,
    so that removing that fraction removes, on average, what nature's tags would.

    >>> cols = {"__experiment__": np.array([1, 1, 2]), "__run__": np.array([5, 5, 5]),
    ...         "__event__": np.array([10, 11, 10]), "__weight__": np.array([2.0, 1.0, 1.0])}
    >>> overlap_fraction(cols, (np.array([10]), {(1, 5, 10): 0.5})).tolist()
    [0.25, 0.0, 0.0]
    """
    events, keys = hta
    out = np.zeros(len(cols["__event__"]))
    for i in np.flatnonzero(np.isin(cols["__event__"], events)):  # cheap pre-filter
        key = (int(cols["__experiment__"][i]), int(cols["__run__"][i]), int(cols["__event__"][i]))
        if key in keys:
            out[i] = min(1.0, keys[key] / float(cols["__weight__"][i]))
    return out


@lru_cache(maxsize=4)
def load_models(folder: str) -> Models:
    """Load (once per process) the model files of a training folder."""
    path = Path(folder)
    return Models(
        KFoldBDT.load(path / MODEL_FILES["bdt1"]),
        KFoldBDT.load(path / MODEL_FILES["bdt2"]),
        KFoldBDT.load(path / MODEL_FILES["bdtc"]),
        EtaTransform.load(path / MODEL_FILES["eta"]),
    )


class Scores(NamedTuple):
    """Model outputs of the selected events (NaN where a model was not evaluated)."""

    bdt1: np.ndarray
    bdt2: np.ndarray  # where BDT1 passes
    bdtc: np.ndarray  # continuum classifier p, where BDT1 passes (continuum MC only)


def _take(cols: Mapping[str, np.ndarray], rows: np.ndarray, names: tuple[str, ...]) -> dict:
    keys = (*names, "__run__", "__event__", *((COPY_OF,) if COPY_OF in cols else ()))
    return {k: cols[k][rows] for k in keys}


def _score(
    model: KFoldBDT,
    cols: Mapping[str, np.ndarray],
    rows: np.ndarray,
    base: tuple[Mapping[str, np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    """``model`` on ``rows``; with a base (columns, scores), only re-scoring what moved."""
    if base is None:
        sub = _take(cols, rows, model.features)
        return model.score(sub)
    base_cols, base_scores = base
    out = base_scores[rows]
    known = ~np.isnan(out)
    if known.any():
        out[known] = model.rescore(out[known], base_cols, cols, rows[known])
    if not known.all():
        new = _take(cols, rows[~known], model.features)
        out[~known] = model.score(new)
    return out


def nature_source(filename: str) -> str:
    """The sample a nature-stream file was made from (the production names it so).

    >>> nature_source("/runs/default/ntuples/nature_on/ccbar_0003.root")
    'ccbar'
    """
    return Path(filename).stem.rsplit("_", 1)[0]


def _fit_axes() -> tuple[hist.axis.Variable, hist.axis.Variable]:
    """The fit's eta(BDT2) x q2rec bins."""
    return (
        hist.axis.Variable(ETA_EDGES, name="eta", label="eta(BDT2)"),
        hist.axis.Variable(Q2_EDGES, name="q2rec", label="q2rec [GeV^2]"),
    )


def _loose_axes() -> tuple[hist.axis.Regular, hist.axis.Variable]:
    """The loose region eta(BDT2) > 0.5 in 50 bins x the fit's q2rec bins."""
    return (
        hist.axis.Regular(50, 0.5, 1.0, name="eta", label="eta(BDT2)"),
        hist.axis.Variable(Q2_EDGES, name="q2rec", label="q2rec [GeV^2]"),
    )


def _fit_hist() -> hist.Hist:
    """The fit's eta x q2rec histogram, one slice per variation."""
    return hist.Hist(
        hist.axis.StrCategory(list(HIST_VARIATIONS), name="variation"),
        *_fit_axes(),
        storage=hist.storage.Weight(),
    )


def _loose_hist() -> hist.Hist:
    """The loose region (eta > 0.5) in the fit's q2rec bins, every variation.

    The factorised signal-region templates of the measurement (knunu.fits.factorise).
    """
    return hist.Hist(
        hist.axis.StrCategory(list(HIST_VARIATIONS), name="variation"),
        *_loose_axes(),
        storage=hist.storage.Weight(),
    )


def _control_hist(eta: np.ndarray, q2rec: np.ndarray, weight: np.ndarray) -> hist.Hist:
    """The control plots' histogram: eta > 0.75 in 13 q2rec bins."""
    h = hist.Hist(
        hist.axis.Regular(25, 0.75, 1.0, name="eta", label="eta(BDT2)"),
        hist.axis.Regular(13, -1.0, 25.0, name="q2rec", label="q2rec [GeV^2]"),
        storage=hist.storage.Weight(),
    )
    return h.fill(eta=eta, q2rec=q2rec, weight=weight)


def _sources_hist(source: str, eta: np.ndarray, q2rec: np.ndarray, weight: np.ndarray) -> hist.Hist:
    """The nature stream's loose region by the sample it was made from."""
    h = hist.Hist(
        hist.axis.StrCategory([], growth=True, name="source"),
        *_loose_axes(),
        storage=hist.storage.Weight(),
    )
    return h.fill(source=source, eta=eta, q2rec=q2rec, weight=weight)


def _q2gen_hist(cols: Mapping[str, np.ndarray], in_sr: np.ndarray, weight: np.ndarray) -> hist.Hist:
    """Signal in the signal region by q2gen (the efficiency's numerator)."""
    h = hist.Hist(
        hist.axis.Regular(*Q2GEN_BINS, name="q2gen", label="q2gen [GeV^2]"),
        storage=hist.storage.Weight(),
    )
    return h.fill(q2gen=cols["q2gen"][in_sr], weight=weight[in_sr])


def _modes_hist(cols: Mapping[str, np.ndarray], in_sr: np.ndarray, weight: np.ndarray) -> hist.Hist:
    """Signal-region B Bbar events by the decay modes of their two Bs and by K_L.

    ``mode`` -1 counts every event once; a mode (:data:`~knunu.simulation.bdecays.MODES`)
    counts each event with a B in it once (both Bs in one mode: once). ``klong``: a K_L
    among the event's particles.
    """
    h = hist.Hist(
        hist.axis.IntCategory([-1, *MODES], name="mode", label="B decay mode (-1: every event)"),
        hist.axis.Boolean(name="klong", label="a K_L in the event"),
        storage=hist.storage.Weight(),
    )
    b1, b2 = cols["mcB1Mode"][in_sr], cols["mcB2Mode"][in_sr]
    kl, w = cols["nKL"][in_sr] > 0, weight[in_sr]
    h.fill(mode=np.full(len(w), -1), klong=kl, weight=w)
    h.fill(mode=b1, klong=kl, weight=w)
    other = b2 != b1
    return h.fill(mode=b2[other], klong=kl[other], weight=w[other])


def _q2gen_map(
    cols: Mapping[str, np.ndarray],
    p: np.ndarray,
    eta: np.ndarray,
    q2rec: np.ndarray,
    weight: np.ndarray,
) -> hist.Hist:
    """The fit template of signal by q2gen: the reinterpretation map."""
    h = hist.Hist(
        *_fit_axes(),
        hist.axis.Variable(Q2GEN_MAP_EDGES, name="q2gen", label="q2gen [GeV^2]"),
        storage=hist.storage.Weight(),
    )
    q2gen = map_q2gen(cols["q2gen"][p])
    return h.fill(eta=eta[p], q2rec=q2rec[p], q2gen=q2gen, weight=weight[p])


def _reuse_sums(
    shared: list[np.ndarray],
    p: np.ndarray,
    eta: np.ndarray,
    q2rec: np.ndarray,
    weight: np.ndarray,
    hists: Mapping[str, hist.Hist],
) -> dict[str, Any]:
    """Per shared key (library entry, detector copy) and bin of each histogram, its weights."""
    entries = [g[p] for g in shared]
    out = {}
    for name, h in hists.items():
        n_bins = int(np.prod(h.axes.size[1:]))
        flat = flat_bins(h.axes[1:], eta[p], q2rec[p])
        out[name] = entry_sums(entries, flat, n_bins, weight[p])
    return out


class ITAProcessor(processor.ProcessorABC):
    """ITA histograms for the fit, with the systematic variations, per dataset."""

    def __init__(self, models: str | Path, cfg: Mapping[str, Any]) -> None:
        self.models = str(models)
        self.cfg = dict(cfg)
        # the experiment number is read only to match the HTA's events (overlap removal)
        overlap = ("__experiment__",) if self.cfg.get("overlap") else ()
        #: read where the files have them (knunu's MC): MC errors that know library reuse
        self.optional = ENTRIES
        self.names = tuple(
            dict.fromkeys(
                [
                    *overlap,
                    *BOOKKEEPING,
                    *TRUTH,
                    *ENERGY,
                    *bdt2_features(cfg),
                    "K_q2rec",
                    "K_charge",
                    "K_mcPDG",
                    "nLeptons",
                ]
            )
        )

    def _scores(
        self,
        models: Models,
        cols: Mapping[str, np.ndarray],
        continuum: bool,
        base: tuple[Mapping[str, np.ndarray], Scores] | None = None,
    ) -> Scores:
        """BDT1, then BDT2 and BDTc where BDT1 passes.

        With a base (the nominal columns and scores), only the events whose inputs crossed a
        split threshold are evaluated again; the result is identical to a full evaluation.
        """
        if base is None:
            bdt1 = models.bdt1.score(cols)
        else:
            bdt1 = models.bdt1.rescore(base[1].bdt1, base[0], cols)
        bdt2 = np.full(len(bdt1), np.nan)
        bdtc = np.full(len(bdt1), np.nan)
        rows = np.flatnonzero(bdt1 > self.cfg["bdt1_min"])
        if len(rows):
            bdt2[rows] = _score(models.bdt2, cols, rows, base and (base[0], base[1].bdt2))
            if continuum:  # BDTc takes the BDT2 score as an input
                with_bdt2 = {**cols, "bdt2": bdt2}
                base_c = base and ({**base[0], "bdt2": base[1].bdt2}, base[1].bdtc)
                bdtc[rows] = _score(models.bdtc, with_bdt2, rows, base_c)
        return Scores(bdt1, bdt2, bdtc)

    def _eta_weight(
        self, models: Models, scores: Scores
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(passed, eta) of BDT2 where BDT1 passes, and the BDTc weight (1 where not applied)."""
        passed = ~np.isnan(scores.bdt2)
        eta = np.full(len(passed), np.nan)
        eta[passed] = models.eta(scores.bdt2[passed])
        bdtc = np.ones(len(passed))
        has = ~np.isnan(scores.bdtc)
        bdtc[has] = bdtc_weight(scores.bdtc[has], tuple(self.cfg["bdtc_clip"]))
        return passed, eta, bdtc

    def process(self, events: ak.Array) -> dict[str, Any]:
        """Select, score and histogram one chunk."""
        dataset = events.metadata["dataset"]
        sample, is_data = dataset_kind(dataset)
        continuum = sample in CONTINUUM
        models = load_models(self.models)
        sel = select(events, self.cfg["selection"], (*self.names, *self.optional))
        cols = raw = dict(sel.columns)
        weight = cols["__weight__"].astype(np.float64)
        if not is_data:
            norm = dataset_norm(self.cfg, dataset)
            weight, cols = nominal_mc(cols, self.cfg["corrections"], corrected_inputs, norm)
        nominal = self._scores(models, cols, continuum)
        p, eta, bdtc = self._eta_weight(models, nominal)
        in_sr = p & (eta > SR_ETA)
        truth = sample == "signal" and not is_data
        # q2gen before the overlap removal: the signal-region efficiency of all signal
        q2gen = _q2gen_hist(cols, in_sr, weight * bdtc) if truth else None
        weight, overlap = self._without_overlap(dataset, cols, in_sr, weight, bdtc)
        w_nom = weight * bdtc
        q2 = cols["K_q2rec"]
        fit, loose, reuse = self._templates(
            models, (raw, cols), nominal, weight, dataset, (p, eta, bdtc)
        )
        sources, maps = {}, {}
        if sample == "nature":  # the nature stream per sample it was made from
            source = nature_source(events.metadata["filename"])
            sources["nature_sources"] = _sources_hist(source, eta[p], q2[p], w_nom[p])
        if truth:  # the reinterpretation map: the fit template by q2gen
            maps = {"q2gen": q2gen, "map": _q2gen_map(cols, p, eta, q2, w_nom)}
        if sample in BBBAR and not is_data:  # the signal region's composition
            maps["modes"] = _modes_hist(cols, in_sr, w_nom)
        # the cutflow counts events and sums their MC weights (before corrections)
        mc_weight = ak.to_numpy(events["__weight__"]).astype(np.float64)
        cutflow, raw = cutflow_histograms(
            sel.steps, {"BDT1": p, "eta > 0.92": p & (eta > SR_ETA)}, mc_weight
        )
        return {
            dataset: {
                "events": len(events),
                "chunks": 1,
                "ita": fit,
                "ita_loose": loose,
                **reuse,
                **sources,
                "ita_control": _control_hist(eta[p], q2[p], w_nom[p]),
                "ita_split": _splits(cols, p, eta, q2, w_nom),
                **maps,
                "cutflow": cutflow,
                "cutflow_unweighted": raw,
                "overlap": overlap,
            }
        }

    def _templates(
        self,
        models: Models,
        columns: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
        nominal: Scores,
        weight: np.ndarray,
        dataset: str,
        passed: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> tuple[hist.Hist, hist.Hist, dict[str, Any]]:
        """The fit and loose histograms, and their sums per library entry.

        The nominal, then every variation for MC; the sums for MC with the entries' truth.
        ``columns``: the selected events' columns before and after the MC corrections;
        ``passed``: (BDT1 passed, eta, BDTc weight) of the nominal scores.
        """
        cols = columns[1]
        sample, is_data = dataset_kind(dataset)
        p, eta, bdtc = passed
        w_nom, q2 = weight * bdtc, cols["K_q2rec"]
        fit, loose = _fit_hist(), _loose_hist()

        def fill(variation: str, eta: np.ndarray, q2rec: np.ndarray, weight: np.ndarray) -> None:
            for h in (fit, loose):
                h.fill(variation=variation, eta=eta, q2rec=q2rec, weight=weight)

        fill("nominal", eta[p], q2[p], w_nom[p])
        reuse = {}
        shared = [] if is_data or sample == "nature" else groups(cols)
        if shared:
            reuse = _reuse_sums(
                shared, p, eta, q2, w_nom, {"ita_reuse": fit, "ita_loose_reuse": loose}
            )
        if not is_data:
            for variation in self._variations(models, columns, nominal, weight, dataset, passed):
                fill(*variation)
        return fit, loose, reuse

    def _variations(
        self,
        models: Models,
        columns: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
        nominal: Scores,
        weight: np.ndarray,
        dataset: str,
        passed: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        """Every systematic variation's (name, eta, q2rec, weight) of the events passing BDT1.

        ``columns``: before and after the MC corrections; ``passed``: (BDT1 passed, eta, BDTc
        weight) of the nominal scores. The weight variations first (up, then down), then the
        shifted inputs and the varied corrections, re-scored.
        """
        cols = columns[1]
        sample, _ = dataset_kind(dataset)
        p, eta, bdtc = passed
        w_nom = weight * bdtc
        q2 = cols["K_q2rec"]
        ctx = Context.of(sample, bdtc, self.cfg, dataset)
        for name, factors in WEIGHT_VARIATIONS.items():
            up, down = factors(cols, ctx)
            for label, f in (("up", up), ("down", down)):
                yield f"{name}_{label}", eta[p], q2[p], (w_nom * f)[p]
        continuum = sample in CONTINUUM
        for variation, shifted in self._shifted(models, columns, nominal, weight, continuum):
            yield variation, *shifted

    def _without_overlap(
        self,
        dataset: str,
        cols: Mapping[str, np.ndarray],
        in_sr: np.ndarray,
        weight: np.ndarray,
        bdtc: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The weights without the ITA/HTA overlap, and what was removed.

        Events in both signal regions leave the ITA sample (every histogram and variation),
        decided on the nominal eta; MC removes the tag-probability fraction of the weight (see
        :func:`overlap_fraction`).
        """
        overlap = {
            "ita_sr": int(in_sr.sum()),
            "ita_sr_weight": float((weight * bdtc)[in_sr].sum()),
            "matched": 0,
            "removed_weight": 0.0,
        }
        hta = load_overlap(self.cfg["overlap"]).get(dataset) if self.cfg.get("overlap") else None
        if hta is None:
            return weight, overlap
        frac = np.where(in_sr, overlap_fraction(cols, hta), 0.0)
        overlap["matched"] = int(np.count_nonzero(frac))
        # summed over the same rows, in the same order, as ita_sr_weight
        overlap["removed_weight"] = float((weight * bdtc * frac)[in_sr].sum())
        return weight * (1.0 - frac), overlap

    def _shifted(
        self,
        models: Any,
        columns: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
        nominal: Any,
        weight: np.ndarray,
        continuum: bool,
    ) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Each input and correction variation re-scored.

        ``columns``: before and after the MC corrections. Yields (name, (eta, q2rec, weight)
        of the passing events).
        """
        raw, cols = columns
        for variation, varied in _varied_inputs(raw, cols, self.cfg["corrections"]):
            s = self._scores(models, varied, continuum, (cols, nominal))
            v_p, v_eta, v_bdtc = self._eta_weight(models, s)
            yield variation, (v_eta[v_p], varied["K_q2rec"][v_p], (weight * v_bdtc)[v_p])

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Nothing to do after merging."""
        return accumulator


def _varied_inputs(
    raw: Mapping[str, np.ndarray], cols: Mapping[str, np.ndarray], corrections: Mapping[str, float]
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(variation, inputs) of every input and correction variation, up then down.

    Input variations shift the corrected ``cols``; correction variations correct ``raw`` again
    with one scale moved.
    """
    for name, shift in INPUT_VARIATIONS.items():
        for label, scale in (("up", 1.0), ("down", -1.0)):
            yield f"{name}_{label}", shift(cols, scale)
    for name, moved in CORRECTION_VARIATIONS.items():
        for label, sign in (("up", 1.0), ("down", -1.0)):
            yield f"{name}_{label}", corrected_inputs(raw, moved.corrections(corrections, sign))


def _splits(
    cols: dict[str, np.ndarray], p: np.ndarray, eta: np.ndarray, q2: np.ndarray, w: np.ndarray
) -> hist.Hist:
    """The fit histogram in the halves of the consistency splits.

    Kaon charge, event parity and lepton multiplicity.
    """
    split = hist.Hist(
        hist.axis.StrCategory(list(SPLITS), name="split"),
        *_fit_axes(),
        storage=hist.storage.Weight(),
    )
    halves = {
        "kplus": cols["K_charge"] > 0,
        "kminus": cols["K_charge"] < 0,
        "even": cols["__event__"] % 2 == 0,
        "odd": cols["__event__"] % 2 == 1,
        "nolepton": cols["nLeptons"] == 0,
        "lepton": cols["nLeptons"] > 0,
    }
    for name in SPLITS:
        m = p & halves[name]
        split.fill(split=name, eta=eta[m], q2rec=q2[m], weight=w[m])
    return split
