"""The pion-candidate ITA sample on the tiny production: accounting, chunking, physics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import uproot

from knunu.cluster import get_client
from knunu.processors import run as runner
from knunu.processors.pion import PionProcessor
from knunu.processors.stage import PION_DATASETS, make_histograms

pytestmark = pytest.mark.slow


def _run(production, cfg, models, chunksize, client=None):
    datasets = [d for d in PION_DATASETS if d in production.datasets]
    proc = PionProcessor(str(models), cfg["ita"])
    return runner.run(production, datasets, proc, "ita", client, chunksize)


def test_pion_sample_accounts_for_every_event_and_ignores_chunking_and_workers(
    production, cfg, trained
):
    models = trained[0] / "models"
    out, report = _run(production, cfg, models, 5000)
    for ds, n in report.events_processed.items():
        assert n == report.events_in[ds] == production.entries("ita", ds)
        raw = out[ds]["cutflow_unweighted"]
        flow = dict(zip(raw.axes[0], raw.values(), strict=True))
        assert list(flow)[:2] == ["all", "pion candidate"]
        assert flow["all"] == n >= flow["theta_miss"] >= flow["prescale"] >= flow["BDT1"]
    with get_client("local", n_workers=2) as client:
        others = [
            _run(production, cfg, models, 211)[0],  # primes: unaligned chunk boundaries
            _run(production, cfg, models, 1499, client)[0],
        ]
    for other in others:
        assert other.keys() == out.keys()
        for ds in out:
            a, b = out[ds]["pion"].view(flow=True), other[ds]["pion"].view(flow=True)
            for field in ("value", "variance"):  # sums in another order: equal to rounding
                np.testing.assert_allclose(a[field], b[field], rtol=1e-12, atol=1e-300)
            np.testing.assert_array_equal(
                out[ds]["cutflow_unweighted"].values(), other[ds]["cutflow_unweighted"].values()
            )
    # physics: B+ -> pi+ K0 is two-body, q2rec(pi) sits at m(K0)^2 = 0.25 GeV^2 (B motion and
    # resolution smear it over the first bins); B Bbar MC has events with and without a D -> K_L
    pik0 = out["pi_k0"]["pion"][{"truth": sum, "leptons": sum, "eta": sum}]
    peak = pik0.axes[0].centers[np.argmax(pik0.values())]
    assert peak < 2.0
    charged = out["charged"]["pion"]
    assert charged[{"truth": "dkl"}].sum().value > 0
    assert charged[{"truth": "other"}].sum().value > 0


def test_pion_histograms_in_the_file(production, cfg, trained, tmp_path):
    path = tmp_path / "h.root"
    make_histograms(production, cfg["ita"], trained[0] / "models", path)
    with uproot.open(path) as f:
        keys = {k.split(";")[0] for k in f}
    assert "pion_data_nominal" in keys
    for sample in ("charged", "mixed", "ccbar", "pi_k0"):
        assert {f"pion_{sample}_dkl_nominal", f"pion_{sample}_other_nominal"} <= keys
        assert {f"pion_lepton_{sample}_dkl_nominal", f"pion_lepton_{sample}_other_nominal"} <= keys
    # the lepton-enriched events are a part of all events, bin by bin; B Bbar has leptons
    with uproot.open(path) as f:
        for key in ("data_nominal", "charged_dkl_nominal", "ccbar_other_nominal"):
            every, lep = f[f"pion_{key}"].values(), f[f"pion_lepton_{key}"].values()
            assert np.all(lep <= every + 1e-12)
        charged = f["pion_lepton_charged_dkl_nominal"].values().sum()
        assert 0 < charged < f["pion_charged_dkl_nominal"].values().sum()
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["pion"]["cutflows"]) == {d for d in PION_DATASETS if d in production.datasets}
