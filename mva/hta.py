"""HTA training: BDTh, eta(BDTh) and the HTA continuum classifier.

Inputs are the HTA training tables (TableProcessor with ``analysis="hta"``) and the catalogue.
BDTh separates signal from all on-resonance background MC (B Bbar, continuum, tau pairs),
each weighted to the on-resonance data luminosity with the signal class balanced, k-fold as in
the ITA. eta(BDTh) is the fraction of HTA-selected signal scoring lower, so the signal region
eta > 0.4 in 6 bins of width 0.1 has equal signal in each bin by construction.

The continuum classifier separates off-resonance data from off-resonance continuum MC after
the HTA selection; ``w = p / (1 - p)`` reweights continuum MC. It is trained only when there
are at least ``hta.continuum_min_data`` off-resonance data events (else no correction, and
the summary says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from knunu.errors import ModelError
from knunu.mva.bdt import train_kfold
from knunu.mva.corrections import corrected_hta_inputs, with_d_to_kl
from knunu.mva.eta import EtaTransform
from knunu.mva.train import (
    OFFRES_MC,
    balanced_weights,
    bdtc_weight,
    corrected_tables,
    labelled_columns,
    present,
    read_tables,
    weighted_auc,
)
from knunu.processors.hta import HTA_MODEL_FILES
from knunu.rundir import write_json
from knunu.samples import BACKGROUNDS, SIGNAL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HTATrainingSummary:
    """What the HTA training produced (all scores out-of-fold)."""

    events: dict[str, int]
    auc_bdth: float
    signal_efficiency_selection: float  # of produced signal, after the HTA selection
    signal_efficiency_sr: float  # of produced signal, eta(BDTh) > 0.4
    purity_sr: float  # signal / all MC in the signal region, mu = 1, on-resonance luminosity
    continuum_classifier: str  # "trained (AUC ...)" or why not
    continuum_weight_mean: float


def train_hta(
    tables: str | Path,
    catalogue: Mapping[str, Any],
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    seed: int,
) -> HTATrainingSummary:
    """Train BDTh, eta(BDTh) and the continuum classifier; write them and ``training_hta.json``.

    Raises:
        InputError: tables or catalogue entries are missing.
        ModelError: the signal or background table is empty.
    """
    out = Path(out_dir)
    folds = int(cfg["folds"])
    sets = present(catalogue, (SIGNAL, *BACKGROUNDS))
    frames = corrected_tables(
        read_tables(tables, sets), with_d_to_kl(cfg, catalogue), corrected_hta_inputs
    )
    cols = labelled_columns(frames, catalogue, "data_on", SIGNAL)
    label = cols["_label"]
    if not label.any() or label.all():
        raise ModelError("HTA training: the signal or the background table is empty")
    features = tuple(cfg["features"]["bdth"])
    bdth = train_kfold(
        "bdth", cols, label, balanced_weights(cols["_w"], label), features,
        cfg["xgboost"]["bdth"], folds, seed + 10,
    )  # fmt: skip
    score = bdth.score(cols)
    sig = label == 1
    selected_signal = float(cols["__weight__"][sig].sum())
    eta = EtaTransform.fit(score[sig], cols["__weight__"][sig], selected_signal)
    eta_all = eta(score)
    sr = eta_all > cfg["eta_edges"][0]
    produced = float(catalogue[SIGNAL]["sum_weights"])
    # purity at mu = 1: the signal weight at the data luminosity is _w (not balanced)
    sr_sig, sr_all = cols["_w"][sr & sig].sum(), cols["_w"][sr].sum()

    out.mkdir(parents=True, exist_ok=True)
    note, w_mean = _train_continuum(tables, catalogue, cfg, seed + 11, out)
    bdth.save(out / HTA_MODEL_FILES["bdth"])
    eta.save(out / HTA_MODEL_FILES["eta"])
    summary = HTATrainingSummary(
        events={"signal": int(sig.sum()), "background": int((~sig).sum())},
        auc_bdth=weighted_auc(score, label, cols["_w"]),
        signal_efficiency_selection=selected_signal / produced,
        signal_efficiency_sr=float(cols["__weight__"][sr & sig].sum()) / produced,
        purity_sr=float(sr_sig / sr_all) if sr_all > 0 else float("nan"),
        continuum_classifier=note,
        continuum_weight_mean=w_mean,
    )
    write_json(
        out / "training_hta.json",
        {
            "summary": asdict(summary),
            "models": {k: str(out / v) for k, v in HTA_MODEL_FILES.items()},
        },
    )
    log.info("HTA training done: %s", summary)
    return summary


def _train_continuum(
    tables: str | Path, catalogue: Mapping[str, Any], cfg: Mapping[str, Any], seed: int, out: Path
) -> tuple[str, float]:
    """The continuum classifier, if there are enough off-resonance data; (note, mean weight)."""
    target = out / HTA_MODEL_FILES["continuum"]
    target.unlink(missing_ok=True)  # a stale classifier must not outlive a retraining
    # the data hold tau pairs too
    frames = read_tables(tables, present(catalogue, ("data_off", *OFFRES_MC)))
    frames = corrected_tables(frames, with_d_to_kl(cfg, catalogue), corrected_hta_inputs)
    n_data = len(frames["data_off"])
    if n_data < int(cfg["continuum_min_data"]):
        note = (
            f"not trained: {n_data} off-resonance data events after the HTA selection "
            f"(hta.continuum_min_data = {cfg['continuum_min_data']}); no continuum correction"
        )
        log.warning("HTA continuum classifier %s", note)
        return note, 1.0
    cols = labelled_columns(frames, catalogue, "data_off", "data_off")
    label = cols["_label"]
    if label.all():
        return "not trained: no off-resonance continuum MC after the HTA selection", 1.0
    model = train_kfold(
        "hta_continuum", cols, label, balanced_weights(cols["_w"], label),
        tuple(cfg["features"]["continuum"]), cfg["xgboost"]["continuum"], int(cfg["folds"]), seed,
    )  # fmt: skip
    p = model.score(cols)
    w = bdtc_weight(p, tuple(cfg["continuum_clip"]))
    mc = label == 0
    model.save(target)
    auc = weighted_auc(p, label, balanced_weights(cols["_w"], label))
    mean = float(np.average(w[mc], weights=cols["_w"][mc]))
    return f"trained on {n_data} data events (AUC {auc:.3f})", mean
