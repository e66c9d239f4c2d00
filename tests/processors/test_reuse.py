"""MC errors that know library reuse: the variance estimate against the spread it predicts.

Toy productions pair entries of a small decay library, as knunu's B Bbar MC does: each
production draws a new library and new pairs. Across productions, the spread of each bin's
sum of weights is the MC variance a template really has; sum w^2 misses the part the shared
entries make, and the reuse-aware estimate (knunu.processors.reuse) must find it.
"""

from __future__ import annotations

import hist
import numpy as np
import pytest
from coffea import processor

from knunu.errors import InputError
from knunu.processors.reuse import entry_sums, extra_variance, flat_bins, groups, with_reuse

N_BINS = 3


def _production(rng: np.random.Generator, library: int, events: int, reuse: bool):
    """One toy production: (bin sums, naive variance, reuse-aware variance) per bin."""
    hard = rng.random(library) < 0.05  # the entries a signal-region-like bin needs
    x = rng.exponential(1.0, library)
    a, b = rng.integers(0, library, events), rng.integers(0, library, events)
    if not reuse:  # every event its own entries: a library as large as the draws
        a, b = np.arange(events), np.arange(events, 2 * events)
        hard, x = rng.random(2 * events) < 0.05, rng.exponential(1.0, 2 * events)
    u = rng.random(events) < 0.5  # the detector: independent per event
    flat = np.full(events, -1)
    flat[hard[a] & u] = 0
    flat[hard[b] & ~u] = 1
    flat[hard[a] & hard[b]] = 2
    w = x[a] + 0.5 * x[b]
    inside = flat >= 0
    sums = np.bincount(flat[inside], weights=w[inside], minlength=N_BINS)
    naive = np.bincount(flat[inside], weights=w[inside] ** 2, minlength=N_BINS)
    h = entry_sums((a, b), flat, N_BINS, w)
    return sums, naive, naive + extra_variance(h, N_BINS)


@pytest.mark.parametrize("reuse", [True, False])
def test_the_estimate_matches_the_spread_over_productions(reuse):
    rng = np.random.default_rng(20231114)
    runs = [_production(rng, 2000, 20000, reuse) for _ in range(400)]
    sums, naive, aware = (np.array(r) for r in zip(*runs, strict=True))
    spread = sums.var(axis=0, ddof=1)
    # 400 productions: the spread itself is known to about 7 % (more with heavy tails)
    np.testing.assert_allclose(aware.mean(axis=0), spread, rtol=0.2)
    if reuse:  # about 10 draws of each hard entry: sum w^2 misses most of the variance
        assert np.all(naive.mean(axis=0) < 0.5 * spread)
    else:  # nothing shared: the estimate is sum w^2 exactly
        np.testing.assert_array_equal(aware, naive)


def test_the_histogram_gains_the_extra_variance_scaled_by_the_square():
    nominal = hist.Hist(hist.axis.Regular(2, 0.0, 1.0, name="eta"), storage=hist.storage.Weight())
    eta, w = np.array([0.2, 0.3, 0.7]), np.array([1.0, 2.0, 4.0])
    nominal.fill(eta=eta, weight=w)
    flat = flat_bins(nominal.axes, eta)
    reuse = entry_sums((np.array([7, 7, 7]), np.array([1, 2, -1])), flat, 2, w)
    out = with_reuse(nominal, reuse, 3.0)
    np.testing.assert_allclose(out.values(), [9.0, 12.0])
    # bin 0 shares entry 7: (1 + 2)^2 = 9 instead of 1 + 4; bin 1 alone: 16
    np.testing.assert_allclose(out.variances(), [81.0, 144.0])
    np.testing.assert_allclose(with_reuse(nominal, None, 3.0).variances(), [45.0, 144.0])


def test_sums_merged_in_any_split_equal_the_sums_of_all_events():
    rng = np.random.default_rng(7)
    n = 5000
    # entries beyond 2^31 / bins: keys are int64
    entries = (rng.integers(0, 300, n) + 2**30, rng.integers(-1, 300, n))
    flat, w = rng.integers(-1, 150, n), rng.exponential(1.0, n)
    whole = entry_sums(entries, flat, 150, w)
    for cuts in ([2500], [1, 17, 4000], list(range(250, n, 250))):
        parts = [
            entry_sums(tuple(e[a:b] for e in entries), flat[a:b], 150, w[a:b])
            for a, b in zip([0, *cuts], [*cuts, n], strict=True)
        ]
        merged = processor.accumulate(parts)  # as the runner merges chunk outputs
        np.testing.assert_array_equal(merged.keys, whole.keys)
        np.testing.assert_allclose(merged.sumw, whole.sumw, rtol=1e-12)
        np.testing.assert_allclose(merged.sumw2, whole.sumw2, rtol=1e-12)
    assert np.all(np.diff(whole.keys) > 0)  # sorted, unique
    assert whole.keys.max() >= 2**30 * 150
    # every event inside a bin counts once per entry it has
    inside = flat >= 0
    np.testing.assert_allclose(
        whole.sumw.sum(), w[inside].sum() + w[inside & (entries[1] >= 0)].sum(), rtol=1e-12
    )
    np.testing.assert_array_equal(extra_variance(whole, 150) >= -1e-9, True)


def test_detector_copies_are_one_group_apart_from_library_entries():
    """Copies of a generated event share a key; the key depends on the run, not on entries."""
    cols = {
        "__run__": np.array([7, 7, 7, 8, 7]),
        "mcB1Entry": np.array([5, -1, -1, -1, 5]),
        "mcB2Entry": np.array([-1, -1, -1, -1, -1]),
        "mcCopyOf": np.array([-1, 1, 1, 1, -1]),
    }
    entries, _, copies = groups(cols)
    assert entries.tolist() == [5, -1, -1, -1, 5]
    assert copies[0] == copies[4] == -1
    assert copies[1] == copies[2] != copies[3]  # event 1 of run 7 is not event 1 of run 8
    # two copies of one event in one bin: (w1 + w2)^2, the exact variance of their sum
    s = entry_sums(groups(cols), np.array([0, 0, 0, 0, 1]), 2, np.array([1.0, 0.5, 0.5, 1.0, 1.0]))
    assert extra_variance(s, 2).tolist() == [0.5, 0.0]
    assert groups({"__run__": np.array([1])}) == []  # basf2's MC: nothing shared


def test_a_copy_key_that_does_not_fit_is_an_error():
    with pytest.raises(InputError, match="mcCopyOf"):
        groups({"__run__": np.array([1]), "mcCopyOf": np.array([1 << 20])})
    with pytest.raises(InputError, match="overflows"):
        entry_sums((np.array([1 << 62]),), np.array([0]), 4, np.ones(1))
