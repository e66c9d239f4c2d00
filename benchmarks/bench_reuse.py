"""Merging the library-reuse sums of chunk outputs: knunu's EntrySums against a ``hist``.

The processors keep, per MC dataset, the nominal weights summed per (library entry, bin)
(:class:`knunu.processors.reuse.EntrySums`), and the runner merges the chunk outputs in chunk
order with coffea's ``accumulate``. The peer is what knunu did before: a ``hist`` with a
growing integer-category axis (Weight storage), the way ``hist`` keeps sparse keys, merged the
same way. Side by side in one process, on the same chunks (keys drawn from a library of 300,000
entries x 150 loose-region bins, as in configs/measurement.yaml). Reported per size: seconds
of each merge and their ratio; the two must give the same extra variance (checked).
Writes benchmarks/results/reuse.json.
"""

from __future__ import annotations

import time

import hist
import numpy as np
from _results import write_results
from coffea import processor

from knunu.processors.reuse import EntrySums, extra_variance

N_BINS = 150
LIBRARY = 300_000


def _chunks(rng: np.random.Generator, chunks: int, keys_per_chunk: int) -> list[tuple]:
    out = []
    for _ in range(chunks):
        keys = rng.integers(0, LIBRARY, keys_per_chunk) * N_BINS + rng.integers(
            0, N_BINS, keys_per_chunk
        )
        out.append((keys, rng.exponential(1.0, keys_per_chunk)))
    return out


def _as_hist(keys: np.ndarray, w: np.ndarray) -> hist.Hist:
    h = hist.Hist(hist.axis.IntCategory([], growth=True), storage=hist.storage.Weight())
    h.fill(keys.astype(np.int32), weight=w)
    return h


def _hist_extra(h: hist.Hist) -> np.ndarray:
    keys = np.fromiter(h.axes[0], dtype=np.int64, count=len(h.axes[0]))
    excess = h.values() ** 2 - h.variances()
    return np.bincount(keys % N_BINS, weights=excess, minlength=N_BINS)


def one(chunks: int, keys_per_chunk: int, seed: int = 1) -> dict:
    """Merge ``chunks`` chunk outputs both ways; seconds and the check."""
    data = _chunks(np.random.default_rng(seed), chunks, keys_per_chunk)
    t = time.process_time()
    sums = processor.accumulate(EntrySums.of(k, w) for k, w in data)
    t_sums = time.process_time() - t
    t = time.process_time()
    hists = processor.accumulate(_as_hist(k, w) for k, w in data)
    t_hist = time.process_time() - t
    np.testing.assert_allclose(extra_variance(sums, N_BINS), _hist_extra(hists), rtol=1e-9)
    return {
        "chunks": chunks,
        "keys_per_chunk": keys_per_chunk,
        "distinct_keys": len(sums),
        "entry_sums_s": round(t_sums, 4),
        "hist_s": round(t_hist, 3),
        "ratio": round(t_hist / t_sums, 1),
    }


def main() -> None:
    rows = [one(10, 2_000), one(20, 5_000), one(40, 5_000)]
    for r in rows:
        print(
            f"{r['chunks']} chunks x {r['keys_per_chunk']} keys ({r['distinct_keys']} distinct): "
            f"EntrySums {r['entry_sums_s']:.3f} s, hist {r['hist_s']:.2f} s, {r['ratio']}x"
        )
    write_results("reuse", rows)


if __name__ == "__main__":
    main()
