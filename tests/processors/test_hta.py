"""The HTA: selection on constructed events, training, histograms, overlap removal with the ITA.

The constructed events have several tag candidates (only charged ones in the Mbc/Delta E
window count, the highest signal probability wins) and several kaon candidates; the overlap
removal is checked to be exact on (experiment, run, event) keys built from the files.
"""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pandas as pd
import pytest
import uproot
from coffea.nanoevents import NanoEventsFactory

from knunu.cluster import get_client
from knunu.fits.build import analyses_in_file, write_workspaces
from knunu.fits.catalogue import load_catalogue
from knunu.mva.bdt import KFoldBDT
from knunu.mva.corrections import corrected_hta_inputs, nominal_mc
from knunu.mva.train import lumi_scale
from knunu.processors import hta, ita
from knunu.processors import run as runner
from knunu.processors.reuse import extra_variance
from knunu.processors.schema import Belle2Schema
from knunu.processors.stage import (
    HTA_DATASETS,
    make_histograms,
    overlap_fraction,
    write_histogram_file,
)
from knunu.processors.variations import CORRECTION_VARIATIONS, INPUT_VARIATIONS
from knunu.rundir import write_json

pytestmark = pytest.mark.slow

CUTS = {
    "mbc_min": 5.27,
    "delta_e": [-0.15, 0.1],
    "signal_tracks": 1,
    "kaon_id_min": 0.9,
    "dr_max_cm": 0.5,
    "dz_max_cm": 3.0,
}


def _events(tmp_path, tags: list[list[tuple]], event: dict[str, list]):
    """An ``hta`` tree: tags per event as (mbc, deltaE, sigProb, charge)."""
    n = len(tags)
    fields = ("mbc", "deltaE", "sigProb", "charge")
    jagged = {f"Btag_{f}": [[t[i] for t in ev] for ev in tags] for i, f in enumerate(fields)}
    branches = {
        "__experiment__": np.full(n, 1, np.int32),
        "__run__": np.full(n, 1, np.int32),
        "__event__": np.arange(n, dtype=np.int64),
        "__weight__": np.ones(n),
        "Btag": ak.zip({k[5:]: ak.Array(v) for k, v in jagged.items()}),
        **{k: np.asarray(v) for k, v in event.items()},
    }
    path = tmp_path / "constructed.root"
    with uproot.recreate(path) as f:
        f.mktree(
            "hta",
            {k: (v.type if k == "Btag" else v.dtype) for k, v in branches.items()},
            counter_name=lambda counted: "nBtag",
            field_name=lambda outer, inner: f"{outer}_{inner}",
        )
        f["hta"].extend(branches)
    return NanoEventsFactory.from_root(
        {str(path): "hta"}, schemaclass=Belle2Schema, mode="eager"
    ).events()


def test_selection_takes_the_best_charged_tag_in_the_window_and_one_kaon(tmp_path):
    tags = [
        # best in window is the 0.9 one; the 0.99 tag has Mbc below 5.27
        [(5.28, 0.0, 0.3, 1), (5.28, 0.0, 0.9, 1), (5.25, 0.0, 0.99, 1)],
        # the neutral tag does not count: the charged one (-1) is chosen, kaon has the same sign
        [(5.28, 0.0, 0.8, 0), (5.28, 0.05, 0.5, -1)],
        [],  # no tag at all
        [(5.28, 0.0, 0.6, -1)],  # two signal-side tracks
        [(5.28, 0.0, 0.6, -1), (5.28, 0.2, 0.95, -1)],  # Delta E out; kaon ID fails
        [(5.28, -0.1, 0.4, -1), (5.279, 0.01, 0.7, -1)],  # passes, second tag
    ]
    event = {
        "nSignalTracks": np.array([1, 1, 1, 2, 1, 1], np.int32),
        "Ksig_charge": np.array([-1, -1, 1, 1, 1, 1], np.int32),
        "Ksig_kaonID": np.array([0.95, 0.95, 0.95, 0.95, 0.5, 0.99]),
        "Ksig_dr": np.full(6, 0.1),
        "Ksig_dz": np.full(6, 0.2),
    }
    events = _events(tmp_path, tags, event)
    sel = hta.select_hta(events, CUTS, ("__event__", "Btag_sigProb", "Btag_charge"))
    steps = {k: v.tolist() for k, v in sel.steps.items()}
    assert steps["tag"] == [True, True, False, True, True, True]
    assert steps["one signal track"] == [True, True, False, False, True, True]
    assert steps["kaon"] == [True, True, False, False, False, True]
    assert steps["opposite charge"] == [True, False, False, False, False, True]
    assert sel.columns["__event__"].tolist() == [0, 5]
    assert sel.columns["Btag_sigProb"].tolist() == [0.9, 0.7]
    assert sel.columns["Btag_charge"].tolist() == [1, -1]


def test_overlap_keys_match_on_experiment_run_and_event():
    cols = {
        "__experiment__": np.array([1, 1, 2, 1, 1]),
        "__run__": np.array([5, 6, 5, 5, 5]),
        "__event__": np.array([10, 10, 10, 11, 12]),
    }
    keys = {(1, 5, 10): 1.0, (1, 5, 12): 1.0, (3, 9, 99): 1.0}
    cols["__weight__"] = np.ones(5)
    found = ita.overlap_fraction(cols, (np.array([10, 12, 99]), keys))
    # same event number in another run or experiment is another event
    assert found.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_hta_training_and_eta_definition(trained, cfg):
    summary = trained[4]
    assert summary.auc_bdth > 0.8
    # eta(BDTh) > 0.4 keeps 60 % of the HTA-selected signal by construction: the kept weight
    # fraction is the largest fraction below 0.6 that a cut on the (out-of-fold) score can keep
    ratio = summary.signal_efficiency_sr / summary.signal_efficiency_selection
    table = pd.concat(pd.read_parquet(f) for f in (trained[0] / "tables_hta/signal").glob("*"))
    # BDTh learns the MC with its nominal corrections (weight and inputs), as the processor
    # applies them
    w, cols = nominal_mc(
        {c: table[c].to_numpy() for c in table.columns},
        cfg["hta"]["corrections"],
        corrected_hta_inputs,
    )
    score = KFoldBDT.load(trained[0] / "models/bdth.json").predict(
        cols, cols["__run__"], cols["__event__"]
    )
    levels = np.unique(score)[::-1]  # cut at each distinct score, highest first
    kept = np.array([w[score >= lv].sum() for lv in levels]) / w.sum()
    assert ratio == pytest.approx(kept[kept < 0.6].max(), rel=1e-9)
    # close to 60 % unless one score value holds the difference: at the tiny scale (about 80
    # background events, separable from the signal) the trees saturate: 46 % of the
    # signal shares the top score; then the next cut keeps at least 60 %
    following = kept[kept >= 0.6].min()
    assert ratio > 0.5 or following - ratio > 0.1, (ratio, following)
    assert 0 < summary.purity_sr < 1
    for ds, n in trained[3].events_processed.items():
        assert n == trained[3].events_in[ds]


def _hta_run(production, cfg, models, client=None, chunksize=None):
    sets = [d for d in HTA_DATASETS if d in production.datasets]
    hcfg = {**cfg["hta"], "chunksize": chunksize or cfg["hta"]["chunksize"]}
    proc = hta.HTAProcessor(str(models), hcfg)
    return runner.run(production, sets, proc, "hta", client, hcfg["chunksize"])


def test_hta_histograms_independent_of_executor_and_chunking(production, cfg, trained, tmp_path):
    models = trained[0] / "models"
    reference, _ = _hta_run(production, cfg, models, chunksize=5000)
    n_bins = len(cfg["hta"]["eta_edges"]) - 1
    assert sum(len(out["sr_events"]) for out in reference.values()) > 0
    for other in (
        _hta_run(production, cfg, models, chunksize=97)[0],
        _run_on_dask(production, cfg, models),
    ):
        assert other.keys() == reference.keys()
        for ds in reference:
            assert other[ds]["events"] == reference[ds]["events"]
            assert other[ds]["sr_events"] == reference[ds]["sr_events"]
            for name in ("hta", "hta_control", "cutflow"):
                a, b = reference[ds][name].view(flow=True), other[ds][name].view(flow=True)
                for field in ("value", "variance"):
                    np.testing.assert_allclose(a[field], b[field], rtol=1e-12, atol=1e-300)
            # library reuse summed over every chunk: the same extra variance for any chunking
            assert ("hta_reuse" in other[ds]) == ("hta_reuse" in reference[ds])
            if "hta_reuse" in reference[ds]:
                np.testing.assert_allclose(
                    extra_variance(other[ds]["hta_reuse"], n_bins),
                    extra_variance(reference[ds]["hta_reuse"], n_bins),
                    rtol=1e-9,
                    atol=1e-300,
                )
    # signal events carry one library entry (the tag side's): per bin, their keys' sums are
    # the bin's content, so the keys land in the histogram's own bins
    reuse = reference["signal"]["hta_reuse"]
    per_bin = np.bincount(reuse.keys % n_bins, weights=reuse.sumw, minlength=n_bins)
    nominal = reference["signal"]["hta"][{"variation": "nominal"}].values()
    np.testing.assert_allclose(per_bin, nominal, rtol=1e-10, atol=1e-300)
    # the B Bbar template's errors: per dataset sum w^2 plus the reused entries', scaled
    write_histogram_file(tmp_path / "h.root", {}, production.datasets, reference)
    expected, naive = np.zeros(n_bins), np.zeros(n_bins)
    for ds in ("charged", "mixed"):
        scale = lumi_scale(production.datasets, ds, "data_on")
        plain = reference[ds]["hta"][{"variation": "nominal"}].variances() * scale**2
        naive += plain
        expected += plain + extra_variance(reference[ds]["hta_reuse"], n_bins) * scale**2
    with uproot.open(tmp_path / "h.root") as f:
        written = f["hta_bbbar_nominal"].variances()
    np.testing.assert_allclose(written, expected, rtol=1e-12)
    assert np.all(written >= naive * (1 - 1e-12))


def _run_on_dask(production, cfg, models):
    with get_client("local", n_workers=2) as client:
        return _hta_run(production, cfg, models, client, chunksize=150)[0]


def _ita_keys(production, dataset):
    keys = []
    for f in production.datasets[dataset]["files"]:
        with uproot.open(f["path"]) as rf:
            a = rf["ita"].arrays(
                ["__experiment__", "__run__", "__event__", "__weight__"], library="np"
            )
        keys += list(zip(*(a[k].tolist() for k in a), strict=True))
    return keys


def _ita_with_overlap(production, cfg, models, tmp_path, keys_by_dataset, name):
    path = write_json(tmp_path / f"{name}.json", {"sr_events": keys_by_dataset})
    proc = ita.ITAProcessor(str(models), {**cfg["ita"], "overlap": str(path)})
    out, _ = runner.run(production, ["signal", "charged"], proc, "ita", None, 5000)
    return out


def test_overlap_removal_is_exact(production, cfg, trained, tmp_path):
    models = trained[0] / "models"
    keys = {ds: _ita_keys(production, ds) for ds in ("signal", "charged")}
    everything = _ita_with_overlap(production, cfg, models, tmp_path, keys, "all")
    for ds in keys:
        ov = everything[ds]["overlap"]
        assert ov["ita_sr"] > 0
        # every ITA signal-region event is listed: all of them leave, in every variation
        assert ov["matched"] == ov["ita_sr"]
        # the same weights (x 1.0) summed over the same rows in the same order: exactly equal
        assert ov["removed_weight"] == ov["ita_sr_weight"]
        sr = everything[ds]["ita"][{"variation": "nominal"}].values()
        assert np.all(sr == 0)
    # a partition of the keys partitions the removed events exactly
    even = {ds: [k for k in v if k[2] % 2 == 0] for ds, v in keys.items()}
    odd = {ds: [k for k in v if k[2] % 2 == 1] for ds, v in keys.items()}
    none_by_ds = {
        ds: out["ita"]
        for ds, out in _ita_with_overlap(production, cfg, models, tmp_path, {}, "none").items()
    }
    a = _ita_with_overlap(production, cfg, models, tmp_path, even, "even")
    b = _ita_with_overlap(production, cfg, models, tmp_path, odd, "odd")
    for ds in keys:
        ov = everything[ds]["overlap"]
        assert 0 < a[ds]["overlap"]["matched"] < ov["ita_sr"]
        assert a[ds]["overlap"]["matched"] + b[ds]["overlap"]["matched"] == ov["ita_sr"]
        # removal is decided on the nominal signal region: with the weight variations the
        # halves add up to the untouched histogram; an input variation can move an event that
        # was outside the nominal region (kept in both halves) into the region
        summed = a[ds]["ita"].values() + b[ds]["ita"].values()
        none = none_by_ds[ds]
        rescored = {*INPUT_VARIATIONS, *CORRECTION_VARIATIONS}
        shifted_rows = [
            i for i, v in enumerate(ita.HIST_VARIATIONS) if v.rsplit("_", 1)[0] in rescored
        ]
        same = np.setdiff1d(np.arange(len(ita.HIST_VARIATIONS)), shifted_rows)
        np.testing.assert_allclose(summed[same], none.values()[same], rtol=1e-12, atol=1e-12)
        assert np.all(summed[shifted_rows] >= none.values()[shifted_rows] - 1e-12)
    # another experiment number: the same run and event numbers are other events
    shifted = {ds: [(e + 1, r, n, w) for e, r, n, w in v] for ds, v in keys.items()}
    c = _ita_with_overlap(production, cfg, models, tmp_path, shifted, "shifted")
    assert all(c[ds]["overlap"]["matched"] == 0 for ds in keys)
    # MC tags drawn 4x too often (HTA weight = MC weight / 4): a quarter of each leaves
    quarter = {ds: [(e, r, n, w / 4) for e, r, n, w in v] for ds, v in keys.items()}
    d = _ita_with_overlap(production, cfg, models, tmp_path, quarter, "quarter")
    for ds in keys:
        ov = d[ds]["overlap"]
        # (w / 4) / w is exactly 0.25, and scaling by a power of two commutes with rounding
        assert ov["removed_weight"] == 0.25 * ov["ita_sr_weight"]
        nominal = d[ds]["ita"][{"variation": "nominal"}].values()
        untouched = none_by_ds[ds][{"variation": "nominal"}].values()
        np.testing.assert_allclose(nominal, 0.75 * untouched, rtol=1e-12, atol=1e-12)


def test_histogram_file_holds_both_analyses_with_shared_names(production, cfg, trained, tmp_path):
    models = trained[0] / "models"
    path = tmp_path / "histograms.root"
    out, _ = make_histograms(production, cfg["ita"], models, path, hta_cfg=cfg["hta"])
    assert (tmp_path / "overlap.json").exists()
    with uproot.open(path) as f:
        keys = {k.split(";")[0] for k in f}
    catalogue = load_catalogue()
    for row in catalogue:
        variation = row.variation
        if variation is None:
            continue
        for analysis, samples in row.samples.items():
            prefix = "ita_on" if analysis == "ita" else "hta"
            for sample in samples:
                assert f"{prefix}_{sample}_{variation}_up" in keys, (analysis, sample, variation)
    for row in catalogue:  # the correlated variations exist in both processors, same names
        if row.correlated and row.variation:
            assert f"{row.variation}_up" in ita.HIST_VARIATIONS
            assert f"{row.variation}_up" in hta.HIST_VARIATIONS
    assert "hta_data_nominal" in keys
    assert "hta_data_tracking_up" not in keys
    assert analyses_in_file(path) == ("ita", "hta")
    written = write_workspaces(path, tmp_path / "ws", catalogue, 1e-3, ("ita", "hta"))
    assert {"ita", "hta", "combined"} <= set(written)
    report = json.loads((tmp_path / "histograms.json").read_text())
    assert report["hta"]["report"]["events_processed"] == report["hta"]["report"]["events_in"]
    assert report["overlap"]["signal"] == out["signal"]["overlap"]
    assert 0 < overlap_fraction(report["overlap"], ("signal",), production.datasets) < 1
