"""The nominal MC corrections as the processors apply them (pure numpy, no files)."""

from __future__ import annotations

import numpy as np
import pytest

from knunu.processors.variations import KLongLoss, event_uniform


def _columns(n: int, seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_kl = rng.choice([0, 1, 2], size=n, p=[0.6, 0.3, 0.1]).astype(np.int32)
    e_kl = n_kl * rng.uniform(0.1, 0.8, n)
    return {
        "__run__": np.full(n, 17, np.int32),
        "__event__": np.arange(n, dtype=np.int64),
        "mcKLclusters": n_kl,
        "mcE_KL": e_kl,
        "mcE_hadronic": e_kl + rng.uniform(0, 0.3, n),
        "nClusters": (n_kl + rng.integers(0, 8, n)).astype(np.int32),
        "E_tot": rng.uniform(5, 10, n),
        "E_miss": rng.uniform(0.5, 5, n),
        "K_roe_deltaE": rng.uniform(-1, 0.5, n),
        "K_roe_mass": rng.uniform(2, 5, n),
        "sqrt_s": np.full(n, 10.58),
    }


def test_kl_loss_removes_clusters_at_the_missing_efficiency():
    cols = _columns(200_000)
    out = KLongLoss(0.83)(cols)
    lost = cols["mcKLclusters"] - out["mcKLclusters"]
    assert np.all((lost >= 0) & (lost <= cols["mcKLclusters"]))
    # each K_L cluster survives with probability 0.83 (binomial per event)
    survived = out["mcKLclusters"].sum() / cols["mcKLclusters"].sum()
    assert survived == pytest.approx(0.83, abs=0.004)
    two = cols["mcKLclusters"] == 2
    assert np.mean(lost[two] == 2) == pytest.approx(0.17**2, abs=0.005)
    # the lost energy leaves the visible energy and goes to the missing energy
    d_e = out["E_tot"] - cols["E_tot"]
    np.testing.assert_allclose(d_e, out["mcE_KL"] - cols["mcE_KL"])
    np.testing.assert_allclose(out["E_tot"] + out["E_miss"], cols["E_tot"] + cols["E_miss"])
    np.testing.assert_allclose(out["mcE_hadronic"] - cols["mcE_hadronic"], d_e)
    np.testing.assert_array_equal(out["nClusters"], cols["nClusters"] - lost)
    assert np.all(out["mcE_KL"][out["mcKLclusters"] == 0] == pytest.approx(0.0, abs=1e-12))
    untouched = lost == 0
    np.testing.assert_array_equal(out["K_roe_mass"][untouched], cols["K_roe_mass"][untouched])
    assert KLongLoss(1.0)(cols)["E_tot"] is cols["E_tot"]  # no correction: nothing changes


def test_kl_loss_does_not_depend_on_chunking():
    cols = _columns(10_000)
    whole = KLongLoss(0.83)(cols)
    parts = [
        KLongLoss(0.83)({k: v[a:b] for k, v in cols.items()}) for a, b in ((0, 37), (37, 10_000))
    ]
    for name in ("mcKLclusters", "E_tot", "K_roe_mass"):
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name])


def test_event_uniform_is_uniform_and_reproducible():
    run = np.repeat(np.arange(5), 40_000)
    event = np.tile(np.arange(40_000), 5)
    u = event_uniform(run, event)
    np.testing.assert_array_equal(u, event_uniform(run, event))
    counts, _ = np.histogram(u, bins=20, range=(0, 1))
    assert np.all(np.abs(counts / len(u) - 0.05) < 0.003)
    assert not np.array_equal(u, event_uniform(run, event, salt=1))
