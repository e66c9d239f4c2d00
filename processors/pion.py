"""The ITA machinery on a pion candidate: the pion-enriched sideband and the B+ -> pi+ K0 closure.

The ITA selection with a pion candidate (kaon ID below ``ita.pion.kaon_id_max`` instead of the
kaon ID cut), in the prescaled stream ``__event__ % prescale == 0`` (the simulation's prefilter
keeps pion-candidate events only there), scored with the ITA's BDT1, BDT2, eta and BDTc with
the pion-ID likelihood ratio (1 - kaonID) in place of the kaon ID input. q2rec is taken under
the pion mass hypothesis.

MC weights carry the nominal corrections *except* the D -> K_L rate (which the sideband fit
measures): the K_L efficiency and hadronic energy scale, and BDTc for continuum MC. Per dataset:

- ``pion``: truth (``dkl``: an MC event with a K_L from a D decay, ``other``; data fill
  ``other``) x leptons (``lepton``: at least one identified lepton, ``nolepton``) x eta(BDT2)
  (``ita.pion.eta_edges``) x q2rec(pi);
- ``cutflow`` / ``cutflow_unweighted``: the selection, the prescale, BDT1 and the first eta edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import awkward as ak
import hist
import numpy as np

from knunu.mva.corrections import corrected_inputs
from knunu.processors.ita import ITAProcessor, load_models
from knunu.processors.run import dataset_kind
from knunu.processors.selection import CUTFLOW_STEPS, cutflow_histograms, select
from knunu.samples import CONTINUUM

M_PI = 0.13957
TRUTH_CLASSES = ("dkl", "other")
#: Events with an identified lepton (the lepton-enriched check of the sideband) or without.
LEPTON_CLASSES = ("lepton", "nolepton")
#: Cutflow steps (the last one is ``eta > {first eta edge}``).
STEPS = ("all", "pion candidate", *CUTFLOW_STEPS[2:], "prescale", "BDT1")


def q2rec_pion(p_star: np.ndarray, sqrt_s: np.ndarray) -> np.ndarray:
    """q2rec = s/4 + m^2 - sqrt(s) E* of a track of CM momentum ``p_star`` as a pion.

    >>> round(float(q2rec_pion(np.array([2.5]), np.array([10.58]))[0]), 3)
    1.512
    """
    return sqrt_s**2 / 4 + M_PI**2 - sqrt_s * np.sqrt(p_star**2 + M_PI**2)


class PionProcessor(ITAProcessor):
    """Histograms of the pion-candidate ITA sample per dataset (the ITA's models and scoring)."""

    def __init__(self, models: str | Path, cfg: Mapping[str, Any]) -> None:
        super().__init__(models, {k: v for k, v in cfg.items() if k != "overlap"})
        self.names = (*self.names, "K_pstar")

    def process(self, events: ak.Array) -> dict[str, Any]:
        """Select the pion candidate, score and histogram one chunk."""
        dataset = events.metadata["dataset"]
        sample, is_data = dataset_kind(dataset)
        pion = self.cfg["pion"]
        sel = select(events, self.cfg["selection"], self.names, pion["kaon_id_max"])
        prescaled = sel.columns["__event__"] % int(pion["prescale"]) == 0
        cols = {k: v[prescaled] for k, v in sel.columns.items()}
        # pion ID instead of kaon ID: the BDTs see the pion-ID likelihood ratio 1 - kaonID (above
        # 1 - kaon_id_max, as a selected kaon's kaonID is above the kaon cut)
        cols["K_kaonID"] = 1.0 - cols["K_kaonID"]
        weight = cols["__weight__"].astype(np.float64)
        if not is_data:
            cols = corrected_inputs(cols, self.cfg["corrections"])
        models = load_models(self.models)
        scores = self._scores(models, cols, sample in CONTINUUM)
        p, eta, bdtc = self._eta_weight(models, scores)
        edges = tuple(pion["eta_edges"])
        h = hist.Hist(
            hist.axis.StrCategory(list(TRUTH_CLASSES), name="truth"),
            hist.axis.StrCategory(list(LEPTON_CLASSES), name="leptons"),
            hist.axis.Variable(edges, name="eta", label="eta(BDT2)"),
            hist.axis.Regular(*pion["q2rec_bins"], name="q2rec", label="q2rec(pi) [GeV^2]"),
            storage=hist.storage.Weight(),
        )
        q2 = q2rec_pion(cols["K_pstar"], cols["sqrt_s"])
        dkl = np.zeros(len(q2), dtype=bool) if is_data else cols["mcDtoKL"] > 0
        w = weight * bdtc
        lepton = cols["nLeptons"] > 0
        for name, mask in (("dkl", p & dkl), ("other", p & ~dkl)):
            for leptons, with_lepton in (("lepton", lepton), ("nolepton", ~lepton)):
                m = mask & with_lepton
                h.fill(truth=name, leptons=leptons, eta=eta[m], q2rec=q2[m], weight=w[m])
        steps = {
            ("pion candidate" if k == "kaon candidate" else k): v for k, v in sel.steps.items()
        }
        after = {
            "prescale": prescaled,
            "BDT1": _expand(prescaled, p),
            f"eta > {edges[0]:g}": _expand(prescaled, p & (eta > edges[0])),
        }
        mc_weight = ak.to_numpy(events["__weight__"]).astype(np.float64)
        cutflow, raw = cutflow_histograms(steps, after, mc_weight)
        return {
            dataset: {
                "events": len(events),
                "chunks": 1,
                "pion": h,
                "cutflow": cutflow,
                "cutflow_unweighted": raw,
            }
        }


def _expand(where: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A mask over the rows of ``where`` that are True, as a mask over all of its rows."""
    out = np.zeros(len(where), dtype=bool)
    out[np.flatnonzero(where)[mask]] = True
    return out
