"""The ITA stages on a tiny production: tables, training, histograms, accounting, a fit.

One tiny-scale production (pseudo-data included) is simulated on a 2-worker LocalCluster; the
training tables, BDTs and histograms are made from it. Histograms must not depend on the
executor or the chunk size, every event must be accounted for, and a signal injected at
mu = 5 into pseudo-data built from the histograms must come back from the ITA fit.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import uproot

from knunu.cluster import get_client
from knunu.errors import InputError, ProcessingError
from knunu.fits.build import HistogramFile, build_spec
from knunu.fits.catalogue import load_catalogue
from knunu.processors import run as runner
from knunu.processors.ita import HIST_VARIATIONS, STEPS, ITAProcessor
from knunu.processors.reuse import extra_variance
from knunu.processors.stage import ITA_DATASETS, make_histograms, write_histogram_file

pytestmark = pytest.mark.slow


def test_tables_account_for_every_event(production, trained):
    base, report, summary = trained[:3]
    datasets = [d for d in ITA_DATASETS if d in production.datasets]
    for ds in datasets:
        assert report.events_processed[ds] == production.entries("ita", ds) > 0
        rows = sum(len(pd.read_parquet(f)) for f in (base / "tables" / ds).glob("*.parquet"))
        assert 0 < rows <= report.events_processed[ds]
    # the BDTs learn: out-of-fold separation and the signal-region definition
    assert summary.auc_bdt1 > 0.9
    assert summary.auc_bdt2 > 0.6
    assert summary.signal_efficiency_sr == pytest.approx(0.08, abs=0.002)
    assert summary.signal_efficiency_bdt1 > 0.08


def _histograms(production, cfg, models, tmp_path, client=None, chunksize=None):
    ita = {**cfg["ita"], "chunksize": chunksize or cfg["ita"]["chunksize"]}
    out, report = make_histograms(production, ita, models, tmp_path / "h.root", client)
    return out, report


def _same(a, b):
    assert a.keys() == b.keys()
    for ds in a:
        assert a[ds]["events"] == b[ds]["events"]
        np.testing.assert_array_equal(
            a[ds]["cutflow_unweighted"].values(), b[ds]["cutflow_unweighted"].values()
        )
        for name in ("ita", "ita_control", "cutflow", "modes"):
            assert (name in a[ds]) == (name in b[ds])
            if name not in a[ds]:
                continue
            va, vb = a[ds][name].view(flow=True), b[ds][name].view(flow=True)
            for field in ("value", "variance"):  # sums in another order: equal to rounding
                np.testing.assert_allclose(va[field], vb[field], rtol=1e-12, atol=1e-300)
        # library reuse is summed over every chunk: the same extra variance for any chunking
        for name, n_bins in (("ita_reuse", 12), ("ita_loose_reuse", 150)):
            assert (name in a[ds]) == (name in b[ds])
            if name in a[ds]:
                np.testing.assert_allclose(
                    extra_variance(a[ds][name], n_bins),
                    extra_variance(b[ds][name], n_bins),
                    rtol=1e-9,
                    atol=1e-300,
                )


def test_histograms_independent_of_executor_and_chunking(production, cfg, trained, tmp_path):
    models = trained[0] / "models"
    reference, report = _histograms(production, cfg, models, tmp_path)
    for ds, n in report.events_processed.items():
        assert n == report.events_in[ds] == production.entries("ita", ds)
        flow = reference[ds]["cutflow_unweighted"].values()
        assert flow[0] == n
        assert np.all(np.diff(flow) <= 0)
        assert list(reference[ds]["cutflow"].axes[0]) == list(STEPS)
    # chunk sizes that cut at unaligned places (primes): 211 every dataset but the three
    # smallest (ddbar, ssbar off resonance and tau pairs off resonance, a chunk each)
    _same(reference, _histograms(production, cfg, models, tmp_path, chunksize=211)[0])
    with get_client("local", n_workers=2) as client:
        _same(reference, _histograms(production, cfg, models, tmp_path, client, 1499)[0])


def test_histogram_file_contract_and_variations(production, cfg, trained, tmp_path):
    out, _ = _histograms(production, cfg, trained[0] / "models", tmp_path)
    with uproot.open(tmp_path / "h.root") as f:
        keys = {k.split(";")[0] for k in f}
    for sample in ("signal", "charged", "mixed", "uubar", "ddbar", "ssbar", "ccbar", "taupair"):
        assert {f"ita_on_{sample}_{v}" for v in HIST_VARIATIONS} <= keys
    assert {"ita_on_data_nominal", "ita_off_data_nominal", "ita_off_ccbar_bdtc_up"} <= keys
    assert "ita_on_data_tracking_up" not in keys  # data: nominal only
    sig = out["signal"]["ita"]
    nominal = sig[{"variation": "nominal"}].values()
    # a weight variation moves the signal; a background-only one leaves it alone
    assert not np.allclose(sig[{"variation": "ff_c2_up"}].values(), nominal)
    np.testing.assert_array_equal(sig[{"variation": "k_kl_kl_up"}].values(), nominal)
    # MC scaled to the data luminosity: signal in the file = histogram x L_data / L_signal
    cat = production.datasets
    scale = cat["data_on"]["luminosity_fb"] / cat["signal"]["luminosity_fb"]
    hfile = HistogramFile(tmp_path / "h.root")
    values, variances = hfile.get("ita_on", "signal", "nominal")
    hfile.close()
    np.testing.assert_allclose(values, nominal * scale, rtol=1e-12)
    # eta was calibrated on the weights and inputs the processor fills (the nominal
    # corrections): the signal region holds the training's 8 % of the produced signal
    summary = trained[2]
    assert summary.signal_efficiency_sr == pytest.approx(0.08, abs=0.002)
    filled = out["signal"]["q2gen"].values(flow=True).sum() / cat["signal"]["sum_weights"]
    assert filled == pytest.approx(summary.signal_efficiency_sr, rel=1e-9)
    # the signal region's B Bbar by decay mode: every event once in mode -1, as in the fit
    # histogram's signal region (eta > 0.92, flow included), and a mode at least as often
    for sample in ("charged", "mixed"):
        modes = out[sample]["modes"]
        every = modes.values()[list(modes.axes[0]).index(-1)].sum()
        # eta's underflow holds BDT1's events below the signal region
        in_fit = out[sample]["ita"][{"variation": "nominal"}].values(flow=True)[1:].sum()
        assert every == pytest.approx(in_fit, rel=1e-12)
        assert modes.values().sum() >= 2 * every * (1 - 1e-12)  # each event: -1 and >= 1 mode
    assert "modes" not in out["uubar"]
    # the variance: sum w^2 plus what the reuse of library entries adds (the tag-side B)
    naive = sig[{"variation": "nominal"}].variances() * scale**2
    # signal events carry one library entry (the tag side's): per bin, their keys' sums are
    # the bin's content, so the keys land in the histogram's own bins (C order, no flow)
    reuse = out["signal"]["ita_reuse"]
    per_bin = np.bincount(reuse.keys % 12, weights=reuse.sumw, minlength=12).reshape(4, 3)
    np.testing.assert_allclose(per_bin, nominal, rtol=1e-10, atol=1e-300)
    extra = extra_variance(out["signal"]["ita_reuse"], 12).reshape(4, 3) * scale**2
    np.testing.assert_allclose(variances, naive + extra, rtol=1e-12)
    # B Bbar: the same for the signal region and the loose region (factorised templates)
    hfile = HistogramFile(tmp_path / "h.root")
    _, charged = hfile.get("ita_on", "charged", "nominal")
    _, loose = hfile.get("ita_on_loose", "charged", "nominal")
    hfile.close()
    scale = cat["data_on"]["luminosity_fb"] / cat["charged"]["luminosity_fb"]
    naive = out["charged"]["ita"][{"variation": "nominal"}].variances() * scale**2
    assert np.all(charged >= naive * (1 - 1e-12))  # (3 signal-region events here)
    naive = out["charged"]["ita_loose"][{"variation": "nominal"}].variances() * scale**2
    extra = extra_variance(out["charged"]["ita_loose_reuse"], 150).reshape(50, 3) * scale**2
    np.testing.assert_allclose(loose, naive + extra, rtol=1e-12)
    assert loose.sum() > naive.sum()  # a few loose-region bins hold events sharing an entry
    # continuum MC has no library: its errors stay sum w^2
    assert "ita_reuse" in out["charged"]
    assert "ita_reuse" in out["uubar"]
    assert extra_variance(out["uubar"]["ita_reuse"], 12).sum() == 0.0


def test_a_missing_file_fails_loudly(production, cfg, trained, tmp_path):
    broken = runner.Catalogue(production.path, copy.deepcopy(production.datasets))
    first = broken.datasets["ccbar"]["files"][0]
    first["path"] = str(tmp_path / "gone.root")
    with pytest.raises(Exception, match=r"gone\.root: file not found"):
        make_histograms(broken, cfg["ita"], trained[0] / "models", tmp_path / "x.root")
    assert not (tmp_path / "x.root").exists()
    # a catalogue that disagrees with its file is named before anything runs
    wrong = runner.Catalogue(production.path, copy.deepcopy(production.datasets))
    wrong.datasets["signal"]["files"][0]["entries_ita"] += 1
    proc = ITAProcessor(str(trained[0] / "models"), cfg["ita"])
    with pytest.raises(InputError, match=r"entries in 'ita', catalogue says"):
        runner.run(wrong, ["signal"], proc, "ita")
    # events a processor loses on the way are caught by the accounting
    with pytest.raises(ProcessingError, match=r"events processed \+ 0 lost != \d+ in its files"):
        runner.run(
            production,
            ["signal"],
            _DroppingProcessor(str(trained[0] / "models"), cfg["ita"]),
            "ita",
        )


class _DroppingProcessor(ITAProcessor):
    """An ITA processor that forgets one event per chunk (for the accounting check)."""

    def process(self, events):
        out = super().process(events)
        out[events.metadata["dataset"]]["events"] -= 1
        return out


def test_injected_signal_is_recovered_by_the_ita_fit(production, cfg, trained, tmp_path):
    out, _ = _histograms(production, cfg, trained[0] / "models", tmp_path)
    # the templates at 100 fb^-1 (on) and 12 fb^-1 (off), pseudo-data drawn at mu = 5: the
    # tiny production's signal region holds a handful of background MC events (weights of
    # 10^3-10^4 each), so the sensitivity comes from the bins they leave empty and
    # at 10 fb^-1 sigma(mu) was 3.1 with the targeted B Bbar of the default config (1.1 at
    # 100 fb^-1; 0.7 untargeted)
    cat = copy.deepcopy(production.datasets)
    cat["data_on"]["luminosity_fb"], cat["data_off"]["luminosity_fb"] = 100.0, 12.0
    path = write_histogram_file(tmp_path / "inj.root", out, cat)
    rng = np.random.default_rng(11)
    with uproot.open(path) as f:
        hists = {k.split(";")[0]: f[k].to_hist() for k in f}
    with uproot.update(path) as f:
        for channel, samples in (
            (
                "ita_on",
                ("signal", "charged", "mixed", "uubar", "ddbar", "ssbar", "ccbar", "taupair"),
            ),
            ("ita_off", ("uubar", "ddbar", "ssbar", "ccbar", "taupair")),
        ):
            expected = sum(
                hists[f"{channel}_{s}_nominal"].values() * (5.0 if s == "signal" else 1.0)
                for s in samples
            )
            data = hists[f"{channel}_data_nominal"].copy().reset()
            counts = rng.poisson(expected).astype(float)
            data.view().value = counts
            data.view().variance = counts
            del f[f"{channel}_data_nominal"]
            f[f"{channel}_data_nominal"] = data
    import pyhf

    from knunu.fits.infer import Likelihood

    hfile = HistogramFile(path)
    spec = build_spec(hfile, "ita", load_catalogue())
    hfile.close()
    lh = Likelihood.from_workspace(pyhf.Workspace(spec))
    best = lh.fit()
    error = lh.uncertainties(best).error[lh.poi]
    mu = best.x[lh.poi]
    assert 0 < error < 2.5
    assert abs(mu - 5.0) < 2 * error, (mu, error)
