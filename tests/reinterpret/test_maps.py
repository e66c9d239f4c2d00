"""Reinterpretation maps: the vendored published ones and the run's own."""

from __future__ import annotations

import hashlib
import json

import hist
import numpy as np
import pytest
import uproot

from knunu.errors import InputError
from knunu.fits.workspace import published_workspace_path
from knunu.reinterpret import maps


def test_published_maps_are_the_published_likelihoods_signal_split_by_q2gen():
    published = maps.published_maps()
    spec = json.loads(published_workspace_path().read_text())
    for channel in spec["channels"]:
        region = maps.PUBLISHED_CHANNELS.get(channel["name"])
        if region is None:
            continue
        (signal,) = [s for s in channel["samples"] if s["name"] in ("signal", "sgn_1_had")]
        m = published[region]
        assert m.values.shape == (len(signal["data"]), 101)
        # each row sums to the template's bin (HTA rows 1-2: -/+3e-5 in the source itself)
        np.testing.assert_allclose(m.values.sum(axis=1), signal["data"], rtol=3e-5)
    # the ITA has no events without a generated q2; the HTA a few per mille
    assert published["ita_on_sr"].values[:, 0].sum() == 0.0
    assert 0 < published["hta_sr"].values[:, 0].sum() < 0.003 * published["hta_sr"].values.sum()


def test_an_altered_published_map_is_refused(tmp_path, monkeypatch):
    name, digest = maps.PUBLISHED_FILES["hta_sr"]
    original = maps._data_file(name).read_bytes()
    assert hashlib.sha256(original).hexdigest() == digest
    copy = tmp_path / name
    copy.write_bytes(original.replace(b"e-03", b"e-02", 1))
    real = maps._data_file
    monkeypatch.setattr(maps, "_data_file", lambda n: copy if n == name else real(n))
    with pytest.raises(InputError, match=f"{name}: SHA-256"):
        maps.published_maps()


def _map_file(path, scale=1.0):
    rng = np.random.default_rng(5)
    ita = hist.Hist(
        hist.axis.Variable([0.92, 0.94, 0.96, 0.98, 1.0]),
        hist.axis.Variable([-1.0, 4.0, 8.0, 25.0]),
        hist.axis.Variable(maps.Q2_EDGES),
        storage=hist.storage.Weight(),
    )
    ita.fill(rng.uniform(0.92, 1, 5000), rng.uniform(0, 20, 5000), rng.uniform(0, 22.8, 5000),
             weight=np.full(5000, scale))  # fmt: skip
    hta = hist.Hist(
        hist.axis.Variable([0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
        hist.axis.Variable(maps.Q2_EDGES),
        storage=hist.storage.Weight(),
    )
    hta.fill(rng.uniform(0.4, 1, 800), rng.uniform(0, 22.8, 800), weight=np.full(800, scale))
    with uproot.recreate(path) as f:
        f["ita_on_map_signal_nominal"] = ita
        f["hta_map_signal_nominal"] = hta
    return ita, hta


def test_run_maps_are_cut_like_the_fit_channels(tmp_path):
    ita, hta = _map_file(tmp_path / "h.root", scale=0.5)
    run = maps.run_maps(tmp_path / "h.root")
    assert set(run) == {"ita_on_sr", "ita_on_cr", "hta_sr"}
    # eta-major: the signal region is eta rows 1-3 with q2rec fastest, the CR eta row 0
    np.testing.assert_array_equal(run["ita_on_sr"].values, ita.values()[1:].reshape(9, 101))
    np.testing.assert_array_equal(run["ita_on_cr"].values, ita.values()[0])
    np.testing.assert_array_equal(run["hta_sr"].variances, hta.variances())
    written = maps.write_maps(run, tmp_path / "out")
    assert {p.name for p in written} == {
        "map_ita_on_sr.csv", "map_ita_on_cr.csv", "map_hta_sr.csv", "maps.json"
    }  # fmt: skip
    back = np.loadtxt(tmp_path / "out" / "map_hta_sr.csv", delimiter=",")
    np.testing.assert_allclose(back, run["hta_sr"].values, rtol=1e-9)
    same = maps.compare(run, run)
    np.testing.assert_allclose(same["ita_on_sr"].row_ratio, 1.0)


def test_a_histogram_file_without_maps_is_named(tmp_path):
    with uproot.recreate(tmp_path / "old.root") as f:
        f["ita_on_signal_nominal"] = hist.Hist(hist.axis.Regular(2, 0, 1))
    with pytest.raises(InputError, match=r"old.root.*ita_on_map_signal_nominal"):
        maps.run_maps(tmp_path / "old.root")
