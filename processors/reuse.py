"""MC-statistical errors that know a decay-library entry is reused.

knunu's B Bbar MC pairs entries of single-B decay libraries (``knunu.simulation.bdecays``), and
the targeting draws the entries with a hard or lone kaon many times. Events that share an entry
are not independent, so sum w^2 underestimates a template's MC variance (up to 1.5x in the
HTA's signal region at the default scale, ``benchmarks/study_reuse.py``).

The processors keep, per MC dataset and fit histogram, sums keyed by (library entry, bin)
(:class:`EntrySums`): the sum of the weights and of the squared weights of the events that use that
entry and land in that bin. An event counts once for each of its entries (the ntuple's
``mcB1Entry``/``mcB2Entry``; -1, the signal B or no library, counts nowhere). Per bin the
variance is then

    sum_e w_e^2 + sum_g [(sum_{e in g} w_e)^2 - sum_{e in g} w_e^2],

the events that share an entry counted as fully correlated through it (conservative: their
other B and their detector response are independent). Without reuse every group holds one
event and the variance is sum w^2. The sums are kept by key until every chunk is merged, so
the result does not depend on chunking. Files without the entry branches (basf2's MC) get
sum w^2, as before.

A detector copy (knunu's continuum MC, ``mcCopyOf`` >= 0: the generated event passed the
detector several times, each entry with its share of the weight) shares its generated event
with the other copies, which is one more such key (:func:`groups`); there the formula is the
exact variance of a sum of independent groups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import hist
import numpy as np

from knunu.errors import InputError
from knunu.mva.bdt import COPY_OF, copy_groups, int_keys

#: The truth branches naming each B's library entry (knunu's simulation; -1: none).
ENTRIES = ("mcB1Entry", "mcB2Entry")


def groups(cols: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The keys through which events share their weight's randomness (-1: none).

    Each B's library entry (when the columns have both), and for detector copies the
    generated event (:func:`knunu.mva.bdt.copy_groups`).

    >>> cols = {"__run__": np.array([3, 3]), "mcCopyOf": np.array([-1, 5])}
    >>> [g.tolist() for g in groups(cols)] == [[-1, (1 << 52) | (3 << 20) | 5]]
    True

    Raises:
        InputError: an ``mcCopyOf`` does not fit its 20 bits.
    """
    out = []
    if set(ENTRIES) <= set(cols):
        out = [int_keys(cols[e]) for e in ENTRIES]
    if COPY_OF in cols:
        out.append(copy_groups(cols))
    return out


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


@dataclass(frozen=True, eq=False)
class EntrySums:
    """Sums of weights and of squared weights per key = library entry x bins + bin.

    An accumulator (coffea merges chunk outputs with ``+``): the keys are sorted and unique,
    and a sum merges two in O(n log n) with numpy. (A ``hist`` with a growing integer-category
    axis merges in O(n^2): 52 s against 0.17 s for 40 chunks of 5,000 keys,
    ``benchmarks/bench_reuse.py``.)

    >>> a = EntrySums.of(np.array([7, 3, 7]), np.array([1.0, 2.0, 3.0]))
    >>> b = EntrySums.of(np.array([3]), np.array([4.0]))
    >>> s = a + b
    >>> s.keys.tolist(), s.sumw.tolist(), s.sumw2.tolist()
    ([3, 7], [6.0, 4.0], [20.0, 10.0])
    """

    keys: np.ndarray
    sumw: np.ndarray
    sumw2: np.ndarray

    @classmethod
    def of(
        cls, keys: np.ndarray, weight: np.ndarray, weight2: np.ndarray | None = None
    ) -> EntrySums:
        """Sum ``weight`` (and ``weight2``, default ``weight**2``) per distinct key."""
        keys = np.asarray(keys, dtype=np.int64)
        weight = np.asarray(weight, dtype=float)
        weight2 = weight**2 if weight2 is None else np.asarray(weight2, dtype=float)
        unique, inverse = np.unique(keys, return_inverse=True)
        n = len(unique)
        return cls(
            unique,
            np.bincount(inverse, weights=weight, minlength=n).astype(float),
            np.bincount(inverse, weights=weight2, minlength=n).astype(float),
        )

    def __add__(self, other: EntrySums) -> EntrySums:
        if not isinstance(other, EntrySums):
            return NotImplemented
        return EntrySums.of(
            np.concatenate([self.keys, other.keys]),
            np.concatenate([self.sumw, other.sumw]),
            np.concatenate([self.sumw2, other.sumw2]),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def __eq__(self, other: object) -> bool:
        """Bit-identical keys and sums."""
        if not isinstance(other, EntrySums):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in ("keys", "sumw", "sumw2")
        )

    __hash__ = None  # type: ignore[assignment]  # equal by value, holds arrays


def entry_sums(
    entries: Sequence[np.ndarray], flat: np.ndarray, n_bins: int, weight: np.ndarray
) -> EntrySums:
    """Sum of weights (and of squares) per (library entry, bin), each event once per entry.

    Args:
        entries: The events' library entries, one array per B (-1: none).
        flat: Each event's flat bin (:func:`flat_bins`; -1: outside).
        n_bins: Bins of the histogram ``flat`` indexes.
        weight: The events' weights, as the histogram is filled.

    >>> s = entry_sums((np.array([3, 3]), np.array([5, -1])), np.array([1, 1]), 2,
    ...                np.array([1.0, 2.0]))
    >>> s.keys.tolist(), s.sumw.tolist()
    ([7, 11], [3.0, 1.0])
    """
    keys, weights = [], []
    flat = np.asarray(flat, dtype=np.int64)
    for entry in entries:
        entry = np.asarray(entry, dtype=np.int64)
        if len(entry) and entry.max() > np.iinfo(np.int64).max // max(n_bins, 1) - 1:
            raise InputError(f"entry key {entry.max()} x {n_bins} bins overflows 64 bits")
        use = (entry >= 0) & (flat >= 0)
        keys.append(entry[use] * n_bins + flat[use])
        weights.append(np.asarray(weight, dtype=float)[use])
    return EntrySums.of(np.concatenate(keys), np.concatenate(weights))


def extra_variance(reuse: EntrySums, n_bins: int) -> np.ndarray:
    """Per flat bin, the variance that sum w^2 misses: sum_g [(sum w)^2 - sum w^2] >= 0.

    >>> s = entry_sums((np.array([3, 3, 4]),), np.array([0, 0, 1]), 2,
    ...                np.array([1.0, 2.0, 5.0]))
    >>> extra_variance(s, 2).tolist()  # (1 + 2)^2 - 1 - 4 = 4 in bin 0; bin 1 unshared
    [4.0, 0.0]
    """
    excess = reuse.sumw**2 - reuse.sumw2
    return np.bincount(reuse.keys % n_bins, weights=excess, minlength=n_bins)[:n_bins]


def with_reuse(nominal: hist.Hist, reuse: EntrySums | None, scale: float = 1.0) -> hist.Hist:
    """``nominal`` x ``scale`` with the variance of the reused entries added (Weight storage).

    Args:
        nominal: A fit histogram (no category axis left), unscaled.
        reuse: Its :func:`entry_sums`, merged over every chunk; ``None``: none.
        scale: The luminosity scale applied to both (the variance scales with its square).
    """
    out = nominal * scale
    if reuse is None or not len(reuse):
        return out
    shape = nominal.axes.size
    extra = extra_variance(reuse, int(np.prod(shape))).reshape(shape) * scale**2
    view = out.view(flow=False)
    view.variance = view.variance + extra
    return out
