"""MC-statistical errors that know a decay-library entry is reused.

knunu's B Bbar MC pairs entries of single-B decay libraries (``knunu.simulation.bdecays``), and
the targeting draws the entries with a hard or lone kaon many times. Events that share an entry
are not independent, so sum w^2 underestimates a template's MC variance (up to 1.5x in the
HTA's signal region at the default scale, ``benchmarks/study_reuse.py``).

The processors fill, per MC dataset and fit histogram, one more histogram keyed by (library
entry, bin): the sum of the weights and of the squared weights of the events that use that
entry and land in that bin. An event counts once for each of its entries (the ntuple's
``mcB1Entry``/``mcB2Entry``; -1, the signal B or no library, counts nowhere). Per bin the
variance is then

    sum_e w_e^2 + sum_g [(sum_{e in g} w_e)^2 - sum_{e in g} w_e^2],

the events that share an entry counted as fully correlated through it (conservative: their
other B and their detector response are independent). Without reuse every group holds one
event and the variance is sum w^2. The sums are kept by key until every chunk is merged, so
the result does not depend on chunking. Files without the entry branches (basf2's MC) get
sum w^2, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import hist
import numpy as np

from knunu.errors import ProcessingError

#: The truth branches naming each B's library entry (knunu's simulation; -1: none).
ENTRIES = ("mcB1Entry", "mcB2Entry")
#: Keys are int32 (boost-histogram's integer categories): entry x bins + bin.
_KEY_MAX = 2**31 - 1


def flat_bins(axes: Sequence[hist.axis.Axis], *values: np.ndarray) -> np.ndarray:
    """Each event's bin in the C-ordered flat array of ``axes`` (-1: outside every bin).

    >>> ax = (hist.axis.Regular(2, 0.0, 2.0), hist.axis.Variable([0.0, 1.0, 5.0, 9.0]))
    >>> flat_bins(ax, np.array([0.5, 1.5, 3.0]), np.array([6.0, 0.5, 1.0])).tolist()
    [2, 3, -1]
    """
    flat = np.zeros(len(values[0]), dtype=np.int64)
    inside = np.ones(len(values[0]), dtype=bool)
    for axis, v in zip(axes, values, strict=True):
        idx = np.asarray(axis.index(np.asarray(v, dtype=float)), dtype=np.int64)
        inside &= (idx >= 0) & (idx < len(axis))
        flat = flat * len(axis) + idx
    return np.where(inside, flat, -1)


def entry_histogram(
    entries: Sequence[np.ndarray], flat: np.ndarray, n_bins: int, weight: np.ndarray
) -> hist.Hist:
    """Sum of weights (and of squares) per (library entry, bin), each event once per entry.

    Args:
        entries: The events' library entries, one array per B (-1: none).
        flat: Each event's flat bin (:func:`flat_bins`; -1: outside).
        n_bins: Bins of the histogram ``flat`` indexes.
        weight: The events' weights, as the histogram is filled.

    Raises:
        ProcessingError: an entry too large for the int32 key (a library above
            2^31 / ``n_bins`` entries).

    >>> h = entry_histogram((np.array([3, 3]), np.array([5, -1])), np.array([1, 1]), 2,
    ...                     np.array([1.0, 2.0]))
    >>> sorted(zip(h.axes[0], h.values().tolist()))
    [(7, 3.0), (11, 1.0)]
    """
    keys, weights = [], []
    for entry in entries:
        entry = np.asarray(entry, dtype=np.int64)
        use = (entry >= 0) & (flat >= 0)
        if np.any(entry[use] > (_KEY_MAX - n_bins) // n_bins):
            raise ProcessingError(
                f"library entry {int(entry[use].max())} x {n_bins} bins exceeds the int32 key "
                "of the reuse histogram"
            )
        keys.append(entry[use] * n_bins + flat[use])
        weights.append(weight[use])
    h = hist.Hist(
        hist.axis.IntCategory([], growth=True, name="key", label="entry x bins + bin"),
        storage=hist.storage.Weight(),
    )
    h.fill(key=np.concatenate(keys), weight=np.concatenate(weights))
    return h


def extra_variance(reuse: hist.Hist, n_bins: int) -> np.ndarray:
    """Per flat bin, the variance that sum w^2 misses: sum_g [(sum w)^2 - sum w^2] >= 0.

    >>> h = entry_histogram((np.array([3, 3, 4]),), np.array([0, 0, 1]), 2,
    ...                     np.array([1.0, 2.0, 5.0]))
    >>> extra_variance(h, 2).tolist()  # (1 + 2)^2 - 1 - 4 = 4 in bin 0; bin 1 unshared
    [4.0, 0.0]
    """
    keys = np.fromiter(reuse.axes[0], dtype=np.int64, count=len(reuse.axes[0]))
    excess = reuse.values() ** 2 - reuse.variances()
    return np.bincount(keys % n_bins, weights=excess, minlength=n_bins)[:n_bins]


def with_reuse(nominal: hist.Hist, reuse: hist.Hist | None, scale: float = 1.0) -> hist.Hist:
    """``nominal`` x ``scale`` with the variance of the reused entries added (Weight storage).

    Args:
        nominal: A fit histogram (no category axis left), unscaled.
        reuse: Its :func:`entry_histogram`, merged over every chunk; ``None``: none.
        scale: The luminosity scale applied to both (the variance scales with its square).
    """
    out = nominal * scale
    if reuse is None or not len(reuse.axes[0]):
        return out
    shape = nominal.axes.size
    extra = extra_variance(reuse, int(np.prod(shape))).reshape(shape) * scale**2
    view = out.view(flow=False)
    view.variance = view.variance + extra
    return out
