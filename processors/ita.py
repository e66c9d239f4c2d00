"""The ITA processor: kaon-candidate selection, basic event selection, cutflow, histograms.

Stateless: configuration in the constructor only; ``process`` returns plain ``hist.Hist``
objects (Weight storage) and a cutflow, keyed by dataset. BDTs, systematic variations and the
fit histograms come with issue 4.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np
from coffea import processor

#: Candidate and event selection of the ITA (../shared/notes/physics.md).
SELECTION = {
    "kaon_id_min": 0.9,
    "dz_max_cm": 3.0,
    "dr_max_cm": 0.5,
    "n_tracks": (4, 10),
    "e_tot_min": 4.0,
    "theta_miss_deg": (17.0, 160.0),
}

CUTFLOW_STEPS = ("all", "kaon candidate", "n tracks", "E_tot", "theta_miss")


class ITAProcessor(processor.ProcessorABC):
    """Basic ITA selection with the lowest-q2rec kaon candidate per event."""

    def __init__(self, selection: dict[str, Any] | None = None) -> None:
        self.selection = {**SELECTION, **(selection or {})}

    def process(self, events: ak.Array) -> dict[str, Any]:
        """Select events and fill the cutflow and the q2rec histogram of one chunk."""
        cfg = self.selection
        dataset = events.metadata["dataset"]
        weight = ak.to_numpy(events["__weight__"])
        kaons = events.K
        good = (
            (kaons.kaonID > cfg["kaon_id_min"])
            & (abs(kaons.dz) < cfg["dz_max_cm"])
            & (kaons.dr < cfg["dr_max_cm"])
        )
        kaons = kaons[good]
        best = kaons[ak.argmin(kaons.q2rec, axis=1, keepdims=True)]
        has_kaon = ak.to_numpy(ak.num(kaons) > 0)
        lo, hi = cfg["n_tracks"]
        t_lo, t_hi = cfg["theta_miss_deg"]
        masks = [
            np.ones(len(weight), dtype=bool),
            has_kaon,
            (ak.to_numpy(events.nTracks) >= lo) & (ak.to_numpy(events.nTracks) <= hi),
            ak.to_numpy(events.E_tot) > cfg["e_tot_min"],
            (ak.to_numpy(events.theta_miss) > t_lo) & (ak.to_numpy(events.theta_miss) < t_hi),
        ]
        cutflow = hist.Hist(
            hist.axis.StrCategory(list(CUTFLOW_STEPS), name="step"), storage=hist.storage.Weight()
        )
        raw = hist.Hist(hist.axis.StrCategory(list(CUTFLOW_STEPS), name="step"))
        passed = np.ones(len(weight), dtype=bool)
        for step, mask in zip(CUTFLOW_STEPS, masks, strict=True):
            passed &= mask
            cutflow.fill(step=np.full(int(passed.sum()), step), weight=weight[passed])
            raw.fill(step=np.full(int(passed.sum()), step))
        q2rec = ak.to_numpy(ak.fill_none(ak.firsts(best.q2rec), np.nan))[passed]
        h_q2 = hist.Hist(
            hist.axis.Regular(26, -1.0, 25.0, name="q2rec", label="q2rec [GeV^2]"),
            storage=hist.storage.Weight(),
        )
        h_q2.fill(q2rec=q2rec, weight=weight[passed])
        return {
            dataset: {
                "events": len(weight),
                "cutflow": cutflow,
                "cutflow_unweighted": raw,
                "q2rec": h_q2,
            }
        }

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        """Nothing to do after merging."""
        return accumulator
