"""ITA training: BDT1, BDT2 (after BDT1), eta(BDT2) and the continuum reweighting BDTc.

Inputs are the training tables the TableProcessor wrote (parquet per dataset) and the dataset
catalogue (luminosities, produced signal). Simulated events carry their MC weight times the
luminosity scale to the on- (off-) resonance data; the signal class is balanced to the total
background weight. Every score used below is out-of-fold (:mod:`knunu.mva.bdt`).

BDTc separates off-resonance data from off-resonance continuum MC after BDT1 with a relaxed
eta cut; its per-event weight ``w = p / (1 - p)`` (classes balanced, so shape only, clipped)
reweights continuum MC on and off resonance. Its effect is judged by the off-resonance data/MC
chi2 before and after, on out-of-fold scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from knunu.errors import InputError, ModelError
from knunu.mva.bdt import KFoldBDT, copy_groups, train_kfold
from knunu.mva.corrections import corrected_inputs, dataset_norm, nominal_mc, with_d_to_kl
from knunu.mva.eta import EtaTransform
from knunu.rundir import write_json
from knunu.samples import BACKGROUNDS, CONTINUUM, OFFRES, SIGNAL

log = logging.getLogger(__name__)

#: Off-resonance simulated datasets (the BDTc's MC).
OFFRES_MC = tuple(f"{s}_offres" for s in OFFRES)
MODEL_FILES = {"bdt1": "bdt1.json", "bdt2": "bdt2.json", "bdtc": "bdtc.json", "eta": "eta.json"}


def bdt2_features(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """BDT2's inputs: BDT1's followed by the extra ones."""
    return tuple(cfg["features"]["bdt1"]) + tuple(cfg["features"]["bdt2_extra"])


def bdtc_features(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """BDTc's inputs: BDT2's, q2rec and the BDT2 output."""
    return (*bdt2_features(cfg), "K_q2rec", "bdt2")


@dataclass(frozen=True)
class TrainingSummary:
    """What the training produced and how well it separates (all out-of-fold)."""

    events: dict[str, int]
    auc_bdt1: float
    auc_bdt2: float
    auc_bdtc: float
    signal_efficiency_bdt1: float  # of produced signal, after selection and BDT1
    signal_efficiency_sr: float  # of produced signal, eta > 0.92
    bdtc_weight_mean: float
    bdtc_weight_std: float
    offres_chi2_before: float  # data vs MC shape, per degree of freedom
    offres_chi2_after: float
    offres_ndf: int
    offres_data_over_mc: float  # normalisation, before reweighting (shape-only BDTc)


def weighted_auc(score: np.ndarray, label: np.ndarray, weight: np.ndarray) -> float:
    """Area under the ROC curve with event weights (ties counted half).

    >>> weighted_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]), np.ones(4))
    0.75
    """
    order = np.argsort(score, kind="stable")
    s, y, w = score[order], label[order].astype(bool), weight[order]
    _, first = np.unique(s, return_index=True)
    groups = np.split(np.arange(len(s)), first[1:])
    bkg_below, auc = 0.0, 0.0
    for g in groups:
        ws, wb = w[g][y[g]].sum(), w[g][~y[g]].sum()
        auc += ws * (bkg_below + 0.5 * wb)
        bkg_below += wb
    total = w[y].sum() * w[~y].sum()
    return float(auc / total) if total > 0 else float("nan")


def read_tables(tables: str | Path, datasets: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Read the parquet tables of the given datasets.

    Raises:
        InputError: a dataset has no table folder.
    """
    out = {}
    for ds in datasets:
        folder = Path(tables) / ds
        files = sorted(folder.glob("*.parquet"))
        if not folder.is_dir():
            raise InputError(f"{folder}: no training table for dataset '{ds}'")
        frames = [pd.read_parquet(f) for f in files]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        # a stable order independent of which chunk finished first
        if len(frame):
            frame = frame.sort_values(["__run__", "__event__"], kind="stable", ignore_index=True)
        out[ds] = frame
    return out


def present(catalogue: Mapping[str, Any], datasets: tuple[str, ...]) -> tuple[str, ...]:
    """The ``datasets`` the catalogue has; the first one (signal, or the data) is required.

    A user's catalogue need not hold every sample.

    Raises:
        InputError: the first dataset is not in the catalogue.
    """
    if datasets[0] not in catalogue:
        raise InputError(
            f"the run's catalogue has no dataset '{datasets[0]}', which training needs"
        )
    return tuple(d for d in datasets if d in catalogue)


def lumi_scale(catalogue: Mapping[str, Any], dataset: str, target: str) -> float:
    """Factor bringing a simulated dataset to the luminosity of the ``target`` data."""
    ds = catalogue[dataset]
    lum = catalogue[target].get("luminosity_fb")
    if not lum or not ds.get("luminosity_fb"):
        raise InputError(f"catalogue: no luminosity for '{dataset}' or '{target}'")
    return float(lum) / float(ds["luminosity_fb"])


def columns_of(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A table's columns as numpy arrays."""
    return {c: frame[c].to_numpy() for c in frame.columns}


def corrected_tables(
    frames: Mapping[str, pd.DataFrame],
    cfg: Mapping[str, Any],
    inputs: Callable[[Mapping[str, np.ndarray], Mapping[str, float]], dict[str, np.ndarray]],
) -> dict[str, pd.DataFrame]:
    """The MC tables with the nominal corrections the processors apply; data as they are.

    So that the BDTs learn, and eta is calibrated on, the weights and inputs they are applied
    to (:func:`~knunu.mva.corrections.nominal_mc`): ``__weight__`` becomes the nominal weight.
    ``cfg`` is the analysis section with the catalogue's D -> K_L bookkeeping
    (:func:`~knunu.mva.corrections.with_d_to_kl`).
    """
    out = {}
    for ds, frame in frames.items():
        if ds.startswith("data_") or not len(frame):
            out[ds] = frame
            continue
        norm = dataset_norm(cfg, ds)
        weight, cols = nominal_mc(columns_of(frame), cfg["corrections"], inputs, norm)
        out[ds] = pd.DataFrame({**cols, "__weight__": weight})
    return out


def _corrected(
    tables: str | Path,
    catalogue: Mapping[str, Any],
    datasets: tuple[str, ...],
    cfg: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """The ITA tables of the ``datasets`` the catalogue has, MC with its nominal corrections."""
    frames = read_tables(tables, present(catalogue, datasets))
    return corrected_tables(frames, with_d_to_kl(cfg, catalogue), corrected_inputs)


def labelled_columns(
    frames: Mapping[str, pd.DataFrame],
    catalogue: Mapping[str, Any],
    target: str,
    positive: str,
    **flags: Any,
) -> dict[str, np.ndarray]:
    """The training tables of several datasets as one set of columns, labelled and weighted.

    Adds ``_label`` (1 for the ``positive`` dataset), ``_w`` (the MC weight scaled to the
    luminosity of the ``target`` data; data keep their weight) and one column per ``flags``
    entry, ``name=function(dataset)``.
    """
    parts = []
    for ds, frame in frames.items():
        scale = 1.0 if ds.startswith("data_") else lumi_scale(catalogue, ds, target)
        extra = {name: f(ds) for name, f in flags.items()}
        parts.append(
            frame.assign(_label=int(ds == positive), _w=frame["__weight__"] * scale, **extra)
        )
    return columns_of(pd.concat(parts, ignore_index=True))


def train_ita(
    tables: str | Path,
    catalogue: Mapping[str, Any],
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    seed: int,
) -> TrainingSummary:
    """Train BDT1, BDT2, eta and BDTc; write the model files and ``training.json``.

    Args:
        tables: Folder of the TableProcessor's parquet files.
        catalogue: The catalogue's ``datasets`` mapping.
        cfg: The ``ita`` block of the configuration.
        out_dir: Where the model files go.
        seed: Seeds the training.

    Raises:
        InputError: tables or catalogue entries are missing.
        ModelError: a class is empty, or BDT1 keeps less than the signal region needs.
    """
    out = Path(out_dir)
    folds = int(cfg["folds"])
    on = _corrected(tables, catalogue, (SIGNAL, *BACKGROUNDS), cfg)
    cols = labelled_columns(on, catalogue, "data_on", SIGNAL)
    label = cols["_label"]
    if not label.any() or label.all():
        raise ModelError("training: the signal or the background table is empty")
    train_w = balanced_weights(cols["_w"], label)
    f1 = tuple(cfg["features"]["bdt1"])
    bdt1 = train_kfold("bdt1", cols, label, train_w, f1, cfg["xgboost"]["bdt1"], folds, seed)
    s1 = bdt1.score(cols)
    keep = s1 > cfg["bdt1_min"]
    sub = {k: v[keep] for k, v in cols.items()}
    bdt2 = train_kfold("bdt2", sub, label[keep], train_w[keep], bdt2_features(cfg),
                       cfg["xgboost"]["bdt2"], folds, seed + 1)  # fmt: skip
    s2 = bdt2.score(sub)
    eta, eff_bdt1, eff_sr = _eta_of(s2, sub, label[keep] == 1, catalogue)

    out.mkdir(parents=True, exist_ok=True)
    bdtc, check = _train_bdtc(tables, catalogue, cfg, (bdt1, bdt2, eta), seed + 2, out)
    for key, model in (("bdt1", bdt1), ("bdt2", bdt2), ("bdtc", bdtc), ("eta", eta)):
        model.save(out / MODEL_FILES[key])
    events = {"signal": int(label.sum()), "background": int((label == 0).sum())}
    summary = TrainingSummary(
        events={**events, **check.pop("events")},
        auc_bdt1=weighted_auc(s1, label, cols["_w"]),
        auc_bdt2=weighted_auc(s2, label[keep], cols["_w"][keep]),
        signal_efficiency_bdt1=eff_bdt1,
        signal_efficiency_sr=eff_sr,
        **check,
    )
    write_json(
        out / "training.json",
        {"summary": asdict(summary), "models": {k: str(out / v) for k, v in MODEL_FILES.items()}},
    )
    log.info("training done: %s", summary)
    return summary


def _eta_of(
    s2: np.ndarray, sub: Mapping[str, np.ndarray], sig: np.ndarray, catalogue: Mapping[str, Any]
) -> tuple[EtaTransform, float, float]:
    """The eta(BDT2) transform and the signal efficiencies after BDT1 and in the SR.

    eta is normalised to all produced signal; the signal region is eta > 0.92.

    Raises:
        ModelError: BDT1 keeps less signal than the signal region needs (8 %).
    """
    produced = float(catalogue[SIGNAL]["sum_weights"])
    weight = sub["__weight__"][sig]
    eta = EtaTransform.fit(s2[sig], weight, produced)
    eff_bdt1 = float(weight.sum() / produced)
    eff_sr = float(weight[eta(s2[sig]) > 0.92].sum() / produced)
    if eff_bdt1 <= 0.08:
        raise ModelError(
            f"training: selection and BDT1 keep {eff_bdt1:.3f} of the signal, "
            "less than the 0.08 the signal region eta > 0.92 needs"
        )
    return eta, eff_bdt1, eff_sr


def balanced_weights(weight: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Weights with the signal class scaled to the total background weight."""
    sig, bkg = weight[label == 1].sum(), weight[label == 0].sum()
    return np.where(label == 1, weight * bkg / sig, weight) / bkg * len(weight)


def bdtc_weight(p: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """The continuum correction ``w = p / (1 - p)``, clipped.

    >>> bdtc_weight(np.array([0.5, 0.6, 0.99]), (0.2, 5.0)).round(3).tolist()
    [1.0, 1.5, 5.0]
    """
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.clip(p / (1 - p), *clip)


def _train_bdtc(
    tables: str | Path,
    catalogue: Mapping[str, Any],
    cfg: Mapping[str, Any],
    models: tuple[KFoldBDT, KFoldBDT, EtaTransform],
    seed: int,
    out: Path,
) -> tuple[KFoldBDT, dict[str, Any]]:
    """BDTc: off-resonance data (label 1) vs off-resonance continuum MC (label 0).

    ``models``: BDT1, BDT2 and eta, which select the off-resonance events it learns on.
    Writes ``bdtc_offres.png``: off-resonance data vs MC in eta before and after the weights.
    """
    from knunu.mva.plots import offres_comparison
    from knunu.rundir import save_figure

    cols, eta_all = _offres_columns(tables, catalogue, cfg, models)
    label = cols["_label"]
    weight = cols["_w"]
    bdtc = train_kfold(
        "bdtc",
        cols,
        label,
        balanced_weights(weight, label),
        bdtc_features(cfg),
        cfg["xgboost"]["bdtc"],
        int(cfg["folds"]),
        seed,
    )
    p = bdtc.score(cols)
    w = bdtc_weight(p, tuple(cfg["bdtc_clip"]))
    mc = label == 0
    corrected = np.where(mc & (cols["_continuum"] == 1), weight * w, weight)
    edges = np.linspace(cfg["bdtc_eta_min"], 1.0, 6)
    shared = copy_groups(cols)  # the detector copies of one continuum event: one group
    before = offres_chi2(eta_all, cols["K_q2rec"], label, weight, edges, shared)
    after = offres_chi2(eta_all, cols["K_q2rec"], label, corrected, edges, shared)
    fig = offres_comparison(
        eta_all, label, weight, corrected, edges, "eta(BDT2)", (before[0], after[0])
    )
    save_figure(fig, out / "bdtc_offres.png")
    data_w, mc_w = weight[~mc].sum(), weight[mc].sum()
    check = {
        "events": {"offres_data": int((~mc).sum()), "offres_mc": int(mc.sum())},
        "auc_bdtc": weighted_auc(p, label, balanced_weights(weight, label)),
        "bdtc_weight_mean": float(np.average(w[mc], weights=weight[mc])),
        "bdtc_weight_std": float(np.sqrt(np.cov(w[mc], aweights=weight[mc]))),
        "offres_chi2_before": before[0],
        "offres_chi2_after": after[0],
        "offres_ndf": before[1],
        "offres_data_over_mc": float(data_w / mc_w),
    }
    return bdtc, check


def _offres_columns(
    tables: str | Path,
    catalogue: Mapping[str, Any],
    cfg: Mapping[str, Any],
    models: tuple[KFoldBDT, KFoldBDT, EtaTransform],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Off-resonance data and MC past BDT1 and the eta cut of the BDTc, with their eta.

    Raises:
        ModelError: no data or no continuum MC is left.
    """
    bdt1, bdt2, eta = models
    frames = _corrected(tables, catalogue, ("data_off", *OFFRES_MC), cfg)
    cols = labelled_columns(
        frames,
        catalogue,
        "data_off",
        "data_off",
        _continuum=lambda ds: int(ds.removesuffix("_offres") in CONTINUUM),
    )
    keep = bdt1.score(cols) > cfg["bdtc_bdt1_min"]
    cols = {k: v[keep] for k, v in cols.items()}
    cols["bdt2"] = bdt2.score(cols)
    eta_all = eta(cols["bdt2"])
    keep = eta_all > cfg["bdtc_eta_min"]
    cols = {k: v[keep] for k, v in cols.items()}
    label = cols["_label"]
    if not label.any() or label.all():
        raise ModelError(
            f"BDTc: no off-resonance data or no continuum MC after BDT1 > {cfg['bdtc_bdt1_min']} "
            f"and eta > {cfg['bdtc_eta_min']} (too few events for the continuum reweighting)"
        )
    return cols, eta_all[keep]


Q2_EDGES = np.array([-1.0, 4.0, 8.0, 25.0])


def _shared_variance(
    eta: np.ndarray, q2rec: np.ndarray, weight: np.ndarray, key: np.ndarray, eta_edges: np.ndarray
) -> np.ndarray:
    """Per (eta, q2rec) bin, what the events sharing a key add to sum w^2: (sum w)^2 - sum w^2."""
    shape = (len(eta_edges) - 1, len(Q2_EDGES) - 1)
    use = key >= 0
    ie = np.searchsorted(eta_edges, eta[use], side="right") - 1
    iq = np.searchsorted(Q2_EDGES, q2rec[use], side="right") - 1
    ie = np.where(eta[use] == eta_edges[-1], shape[0] - 1, ie)  # histogram2d: last edge in
    iq = np.where(q2rec[use] == Q2_EDGES[-1], shape[1] - 1, iq)
    inside = (ie >= 0) & (ie < shape[0]) & (iq >= 0) & (iq < shape[1])
    flat = ie[inside] * shape[1] + iq[inside]
    groups, inverse = np.unique(np.stack([key[use][inside], flat]), axis=1, return_inverse=True)
    w, n, inverse = weight[use][inside], groups.shape[1], inverse.ravel()
    excess = np.bincount(inverse, w, n) ** 2 - np.bincount(inverse, w**2, n)
    return np.bincount(groups[1], excess, int(np.prod(shape))).reshape(shape)


def offres_chi2(
    eta: np.ndarray,
    q2rec: np.ndarray,
    is_data: np.ndarray,
    weight: np.ndarray,
    eta_edges: np.ndarray,
    shared: np.ndarray | None = None,
) -> tuple[float, int]:
    """Shape chi2 per degree of freedom of data vs MC in (eta, q2rec) bins.

    MC is normalised to the data; each bin's variance is the data count plus the MC's
    variance (scaled): in a bin, the square of the summed weights of the events that share a
    key of ``shared`` (:func:`~knunu.mva.bdt.copy_groups`: the detector copies of one event;
    -1: none), and of every other event its squared weight. Empty bins are skipped.
    """
    d = is_data == 1
    hd = np.histogram2d(eta[d], q2rec[d], bins=(eta_edges, Q2_EDGES))[0]
    hm = np.histogram2d(eta[~d], q2rec[~d], bins=(eta_edges, Q2_EDGES), weights=weight[~d])[0]
    vm = np.histogram2d(eta[~d], q2rec[~d], bins=(eta_edges, Q2_EDGES), weights=weight[~d] ** 2)[0]
    if shared is not None:
        vm = vm + _shared_variance(eta, q2rec, weight, np.where(d, -1, shared), eta_edges)
    norm = hd.sum() / hm.sum() if hm.sum() > 0 else 0.0
    var = hd + vm * norm**2
    ok = var > 0
    ndf = int(ok.sum()) - 1
    chi2 = float(np.sum((hd[ok] - norm * hm[ok]) ** 2 / var[ok]))
    return (chi2 / ndf if ndf > 0 else float("nan")), ndf
