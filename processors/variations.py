"""ITA corrections and systematic variations, as tables the processor reads.

Three kinds, all evaluated in the same pass as the nominal histograms:

- weight variations: per-event factors (up, down) from MC truth (decay-mode codes, D -> K_L
  flags, candidate's true species, track count, q2gen, BDTc weight);
- input variations: shifted BDT inputs (hadronic and photon energy scales) after which BDT1,
  BDT2, eta and BDTc are evaluated again;
- correction variations: a nominal MC correction applied again from the uncorrected inputs
  with its scale moved (the K_L efficiency: more or fewer K_L clusters lost), re-scored as
  the input variations; events migrate between bins as in the paper, not a rate.

Variation names are the ``variation`` field of configs/systematics.yaml; truth codes are
:data:`knunu.simulation.bdecays.MODES` (the HTA uses the same codes and names for the
correlated ones). Data get the nominal only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from knunu.mva.corrections import D_TO_KL_SUMS, EnergyShift, HTAShift, d_to_kl_norm
from knunu.simulation.signal import form_factor_weight

Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ModeRate:
    """A branching-fraction variation: each B decaying in one of ``codes`` gets ``1 +- size``."""

    codes: tuple[int, ...]
    size: float

    def __call__(self, cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        """(up, down) factors of each event."""
        n = np.isin(cols["mcB1Mode"], self.codes).astype(int)
        n += np.isin(cols["mcB2Mode"], self.codes)
        return (1 + self.size) ** n, (1 - self.size) ** n


@dataclass(frozen=True)
class Context:
    """What a weight variation may need besides the columns."""

    sample: str
    bdtc: np.ndarray  # the continuum correction of each event (1 where not applied)
    #: the dataset's generated weights by K_L from D decays, and the nominal B(D -> K_L X)
    #: scale (:func:`~knunu.mva.corrections.d_to_kl_norm`)
    d_to_kl_sums: tuple[float, ...] = ()
    d_to_kl_scale: float = 1.0

    @classmethod
    def of(cls, sample: str, bdtc: np.ndarray, cfg: Mapping[str, Any], dataset: str) -> Context:
        """The context of one dataset's chunk (``cfg``: the analysis section)."""
        sums = tuple(cfg.get(D_TO_KL_SUMS, {}).get(dataset, ()))
        return cls(sample, bdtc, sums, float(cfg["corrections"]["d_to_kl_scale"]))


def _d_to_kl(size: float) -> Callable[[Columns, Context], tuple[np.ndarray, np.ndarray]]:
    # B(D -> K_L X) moved at a fixed number of B decays, as the nominal correction
    def factors(cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        n = cols["mcDtoKL"]
        nominal = d_to_kl_norm(ctx.d_to_kl_sums, ctx.d_to_kl_scale)
        up = d_to_kl_norm(ctx.d_to_kl_sums, ctx.d_to_kl_scale * (1 + size))
        down = d_to_kl_norm(ctx.d_to_kl_sums, ctx.d_to_kl_scale * (1 - size))
        return (1 + size) ** n * nominal / up, (1 - size) ** n * nominal / down

    return factors


def _kaon_id(
    true_kaon: bool, size: float
) -> Callable[[Columns, Context], tuple[np.ndarray, np.ndarray]]:
    def factors(cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        kaon = np.abs(cols["K_mcPDG"]) == 321
        hit = kaon if true_kaon else ~kaon
        return np.where(hit, 1 + size, 1.0), np.where(hit, 1 - size, 1.0)

    return factors


def _tracking(per_track: float) -> Callable[[Columns, Context], tuple[np.ndarray, np.ndarray]]:
    def factors(cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        n = cols["nTracks"]
        return (1 + per_track) ** n, (1 - per_track) ** n

    return factors


def _form_factor(component: int) -> Callable[[Columns, Context], tuple[np.ndarray, np.ndarray]]:
    def factors(cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        if ctx.sample != "signal":
            ones = np.ones(len(cols["q2gen"]))
            return ones, ones
        q2 = cols["q2gen"]
        return form_factor_weight(q2, component, 1.0), form_factor_weight(q2, component, -1.0)

    return factors


def _bdtc(cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    # 100 % of the correction: up doubles it, down removes it (relative to the corrected nominal)
    w = ctx.bdtc
    return np.clip(2 * w - 1, 0.0, None) / w, 1.0 / w


#: Weight variations: name -> factors (up, down) relative to the nominal weight.
WEIGHT_VARIATIONS: dict[str, Callable[[Columns, Context], tuple[np.ndarray, np.ndarray]]] = {
    "br_c1": ModeRate((1,), 0.05),  # B -> D(*) l nu
    "br_c2": ModeRate((5, 6), 0.08),  # B -> D(*) K+, D(*) pi+
    "br_c3": ModeRate((3, 4), 0.15),  # B -> D(*) tau nu, other semileptonic
    "dstarstar_l_nu": ModeRate((2,), 0.5),
    "k_kl_kl": ModeRate((9,), 0.2),
    "k_ks_kl_pwave": ModeRate((11,), 0.3),
    "k_n_nbar": ModeRate((12,), 1.0),
    "d_to_kl": _d_to_kl(0.10),
    "kaon_id_c1": _kaon_id(True, 0.02),  # kaon efficiency
    "kaon_id_c2": _kaon_id(False, 0.10),  # pion (and lepton) mis-identification
    "tracking": _tracking(0.003),
    "ff_c1": _form_factor(0),
    "ff_c2": _form_factor(1),
    "ff_c3": _form_factor(2),
    "bdtc": _bdtc,
}


#: HTA input variations after the nominal correction, name -> (up, down): the hadronic
#: energy scale +-10 % (as the ITA's ``hadronic_energy``).
HTA_INPUT_VARIATIONS: dict[str, tuple[HTAShift, HTAShift]] = {
    "hadronic_energy": (HTAShift(1.0, 1.10), HTAShift(1.0, 0.90)),
}

#: Input variations: name -> shift of one unit (up = +1, down = -1), after the nominal correction.
INPUT_VARIATIONS: dict[str, EnergyShift] = {
    "hadronic_energy": EnergyShift("mcE_hadronic", 0.10),
    "photon_energy": EnergyShift("mcE_photon", 0.005),
}


@dataclass(frozen=True)
class CorrectionScale:
    """A nominal MC correction's scale ``key`` moved by a relative ``size`` (+-1 sigma)."""

    key: str
    size: float

    def corrections(self, nominal: Mapping[str, float], sign: float) -> dict[str, float]:
        """The corrections with the scale moved ``sign`` (+1 up, -1 down) sigma, at most 1.

        The correction can only lose what the MC saw (a K_L cluster), so a scale moved above
        1 stays at 1: with the nominal at 1 (no correction) the up variation is the nominal.

        >>> kl = CorrectionScale("kl_efficiency_scale", 0.08)
        >>> kl.corrections({"kl_efficiency_scale": 0.83}, -1)
        {'kl_efficiency_scale': 0.7636}
        >>> kl.corrections({"kl_efficiency_scale": 1.0}, 1)
        {'kl_efficiency_scale': 1.0}
        """
        moved = round(nominal[self.key] * (1 + sign * self.size), 12)
        return {**nominal, self.key: min(moved, 1.0)}


#: Correction variations: name -> the correction whose scale moves. The K_L ECL efficiency,
#: corrected to 0.83 of the MC's, known to 8 % ([L]; ../shared/notes/physics.md): the event
#: loses its K_L clusters with the same per-event random number at 0.83 x (1 +- 0.08), so a
#: cluster lost at the higher efficiency is lost at the lower one too, and everything is
#: re-scored. Until stop 45 it was a rate: events with a K_L weighted 1 +- 0.08.
CORRECTION_VARIATIONS: dict[str, CorrectionScale] = {
    "kl_efficiency": CorrectionScale("kl_efficiency_scale", 0.08),
}

#: Every variation name, in histogram order (``_up`` and ``_down`` of each).
VARIATIONS = tuple(WEIGHT_VARIATIONS) + tuple(INPUT_VARIATIONS) + tuple(CORRECTION_VARIATIONS)
