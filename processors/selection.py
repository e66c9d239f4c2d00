"""The ITA selection shared by every ITA processor: kaon candidate, basic event selection.

The signal-kaon candidate is a track passing kaon ID and the impact-parameter cuts; with several,
the one with the lowest q2rec (awkward, on the jagged candidates). The basic event selection
is 4 <= N_tracks <= 10, E_tot > 4 GeV and 17 < theta_miss < 160 deg (../shared/notes/physics.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import awkward as ak
import hist
import numpy as np

CUTFLOW_STEPS = ("all", "kaon candidate", "n tracks", "E_tot", "theta_miss")

#: Per-event columns every table and histogram carries besides the BDT inputs.
BOOKKEEPING = ("__run__", "__event__", "__weight__")
#: MC-truth branches the systematics use (absent from data).
TRUTH = (
    "mcProcess",
    "mcB1Mode",
    "mcB2Mode",
    "mcDtoKL",
    "nKL",
    "q2gen",
    "mcE_hadronic",
    "mcE_photon",
    "mcE_KL",
    "mcKLclusters",
    "mcCopyOf",  # knunu's continuum MC: the event a detector copy copies (BDT folds, MC errors)
)
#: q2gen binning of the efficiency histograms (GeV^2; the endpoint is (mB - mK)^2 = 22.9).
Q2GEN_BINS = (12, 0.0, 24.0)
#: q2gen binning of the reinterpretation map (the published convention, arXiv:2507.12393):
#: one bin below 0 (``[-1, 0)``, events without a generated q2) and 100 equal bins over
#: 0-22.885 GeV^2; q2gen at the kinematic endpoint above 22.885 is counted in the last bin.
Q2GEN_MAP_EDGES = tuple([-1.0, *(22.885 * k / 100 for k in range(101))])


def map_q2gen(q2gen: np.ndarray) -> np.ndarray:
    """q2gen placed on :data:`Q2GEN_MAP_EDGES` (none, i.e. negative: first bin; endpoint: last).

    >>> map_q2gen(np.array([-5.0, 3.0, 22.9])).tolist()
    [-0.5, 3.0, 22.884]
    """
    q2gen = np.asarray(q2gen, dtype=float)
    return np.where(q2gen < 0, -0.5, np.minimum(q2gen, Q2GEN_MAP_EDGES[-1] - 1e-3))


#: Event branches the energy-scale variations need.
ENERGY = ("sqrt_s", "E_tot", "E_miss")


def cumulative(names: Sequence[str], masks: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Cumulative cutflow masks: each step passes its own cut and every earlier one.

    >>> cumulative(("a", "b"), (np.array([True, True, False]), np.array([True, False, True])))
    {'a': array([ True,  True, False]), 'b': array([ True, False, False])}
    """
    steps: dict[str, np.ndarray] = {}
    passed = np.ones(len(masks[0]), dtype=bool)
    for name, mask in zip(names, masks, strict=True):
        passed = passed & mask
        steps[name] = passed
    return steps


def cutflow_histograms(
    steps: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], weight: np.ndarray
) -> tuple[hist.Hist, hist.Hist]:
    """The weighted (Weight storage) and unweighted cutflow of one chunk.

    Args:
        steps: Cumulative masks over every event of the chunk (the selection).
        after: Further cumulative masks over the events passing the last of ``steps``
            (BDT and signal-region cuts), in order.
        weight: The MC weight of every event.
    """
    selected = np.flatnonzero(list(steps.values())[-1])
    masks = dict(steps)
    for step, mask in after.items():
        masks[step] = np.zeros(len(weight), dtype=bool)
        masks[step][selected[mask]] = True
    axis = hist.axis.StrCategory(list(masks), name="step")
    weighted, raw = hist.Hist(axis, storage=hist.storage.Weight()), hist.Hist(axis)
    for step, mask in masks.items():
        w = weight[mask]
        weighted[step] = (w.sum(), (w**2).sum())
        raw[step] = len(w)
    return weighted, raw


class Selected(NamedTuple):
    """One chunk after the ITA selection.

    Attributes:
        steps: Boolean mask per cutflow step (cumulative), on all events of the chunk.
        columns: Flat numpy columns of the selected events; ``K_*`` from the chosen candidate.
    """

    steps: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]

    @property
    def n_selected(self) -> int:
        """Events passing the whole selection."""
        return int(np.count_nonzero(self.steps[CUTFLOW_STEPS[-1]]))


def select(
    events: ak.Array,
    cuts: Mapping[str, Any],
    names: Sequence[str],
    pion_kaon_id_max: float | None = None,
) -> Selected:
    """Apply the ITA selection to a chunk and flatten the named columns of the kept events.

    Args:
        events: NanoEvents of the ``ita`` tree (Belle2Schema: candidates in ``events.K``).
        cuts: The ``ita.selection`` block of the configuration.
        names: Columns to return; ``K_x`` is field ``x`` of the chosen candidate, other names
            are event branches. Names missing from the chunk (truth in data) are skipped.
        pion_kaon_id_max: Select a pion candidate instead (kaon ID below this; the pion
            sideband and the B+ -> pi+ K0 closure); the first cutflow step keeps its name.
    """
    # on the flat candidate content (numpy), one pass; the awkward step is the per-event argmin
    kaons = events.K
    counts = ak.to_numpy(ak.num(kaons.q2rec, axis=1))

    def flat(field: str) -> np.ndarray:
        return ak.to_numpy(ak.flatten(kaons[field], axis=1))

    kaon_id = flat("kaonID")
    pid = kaon_id > cuts["kaon_id_min"] if pion_kaon_id_max is None else kaon_id < pion_kaon_id_max
    good = pid & (np.abs(flat("dz")) < cuts["dz_max_cm"]) & (flat("dr") < cuts["dr_max_cm"])
    q2 = np.where(good, flat("q2rec"), np.inf)
    n_tracks = ak.to_numpy(events.nTracks)
    theta = ak.to_numpy(events.theta_miss)
    lo, hi = cuts["n_tracks"]
    t_lo, t_hi = cuts["theta_miss_deg"]
    n_good = ak.to_numpy(ak.sum(ak.unflatten(good, counts), axis=1))
    masks = (
        np.ones(len(n_tracks), dtype=bool),
        n_good > 0,
        (n_tracks >= lo) & (n_tracks <= hi),
        ak.to_numpy(events.E_tot) > cuts["e_tot_min"],
        (theta > t_lo) & (theta < t_hi),
    )
    steps = cumulative(CUTFLOW_STEPS, masks)
    passed = steps[CUTFLOW_STEPS[-1]]
    # the chosen candidate: the first good one with the lowest q2rec (bad ones sit at +inf)
    local = ak.argmin(ak.unflatten(q2, counts), axis=1, mask_identity=False)
    best = (np.cumsum(counts) - counts + ak.to_numpy(local))[passed]
    fields = set(events.fields)
    k_fields = set(kaons.fields)
    columns: dict[str, np.ndarray] = {}
    for name in names:
        if name.startswith("K_"):
            if name[2:] in k_fields:
                columns[name] = flat(name[2:])[best]
        elif name in fields:
            columns[name] = ak.to_numpy(events[name])[passed]
    return Selected(steps, columns)
