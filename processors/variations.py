"""ITA corrections and systematic variations, as tables the processor reads.

Two kinds, both evaluated in the same pass as the nominal histograms:

- weight variations: per-event factors (up, down) from MC truth (decay-mode codes, D -> K_L
  flags, K_L count, candidate's true species, track count, q2gen, BDTc weight);
- input variations: shifted BDT inputs (hadronic and photon energy scales) after which BDT1,
  BDT2, eta and BDTc are evaluated again.

Variation names are the ``variation`` field of configs/systematics.yaml; truth codes are
:data:`knunu.simulation.bdecays.MODES` (the HTA uses the same codes and names for the
correlated ones). Data get the nominal only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

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


def _d_to_kl(size: float) -> Callable[[Columns, Context], tuple[np.ndarray, np.ndarray]]:
    def factors(cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        n = cols["mcDtoKL"]
        return (1 + size) ** n, (1 - size) ** n

    return factors


def _kl_efficiency(size: float) -> Callable[[Columns, Context], tuple[np.ndarray, np.ndarray]]:
    # approximation: a K_L-efficiency change as a rate change of events with K_L
    def factors(cols: Columns, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        has = cols["nKL"] > 0
        return np.where(has, 1 + size, 1.0), np.where(has, 1 - size, 1.0)

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
    "kl_efficiency": _kl_efficiency(0.08),
    "kaon_id_c1": _kaon_id(True, 0.02),  # kaon efficiency
    "kaon_id_c2": _kaon_id(False, 0.10),  # pion (and lepton) mis-identification
    "tracking": _tracking(0.003),
    "ff_c1": _form_factor(0),
    "ff_c2": _form_factor(1),
    "ff_c3": _form_factor(2),
    "bdtc": _bdtc,
}


@dataclass(frozen=True)
class EnergyShift:
    """Scale the energy of one cluster category (truth column ``source``) by ``1 + delta``.

    The shift ``dE = delta * E_source`` moves the visible energy and the rest of event:
    E_tot and the candidate's ROE Delta E by +dE, E_miss by -dE, and the ROE mass at fixed ROE
    momentum. Momentum-based inputs are kept (the cluster directions do not change).
    """

    source: str
    delta: float

    def __call__(self, cols: Columns, scale: float) -> dict[str, np.ndarray]:
        """The columns with ``scale`` units of the shift applied (+1 up, -1 down)."""
        d_e = scale * self.delta * cols[self.source]
        return {**cols, **_visible_energy_shift(cols, d_e), self.source: cols[self.source] + d_e}


def _visible_energy_shift(cols: Columns, d_e: np.ndarray) -> dict[str, np.ndarray]:
    """E_tot, E_miss and the ROE Delta E and mass after the visible energy moved by ``d_e``."""
    e_roe = cols["K_roe_deltaE"] + cols["sqrt_s"] / 2
    m2 = cols["K_roe_mass"] ** 2 + 2 * e_roe * d_e + d_e**2
    return {
        "E_tot": cols["E_tot"] + d_e,
        "E_miss": cols["E_miss"] - d_e,
        "K_roe_deltaE": cols["K_roe_deltaE"] + d_e,
        "K_roe_mass": np.sqrt(np.clip(m2, 0.0, None)),
    }


def event_uniform(run: np.ndarray, event: np.ndarray, salt: int = 0) -> np.ndarray:
    """A uniform number in [0, 1) per event, a hash of (run, event, salt) (splitmix64).

    The same event gets the same number in every chunking, worker and rerun.

    >>> u = event_uniform(np.array([1, 1]), np.array([7, 8]))
    >>> bool(np.all((u >= 0) & (u < 1))), bool(u[0] != u[1])
    (True, True)
    """
    x = (np.asarray(run).astype(np.uint64) << np.uint64(32)) ^ np.asarray(event).astype(np.uint64)
    x = x ^ np.uint64(salt * 0x9E3779B97F4A7C15 % (1 << 64))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class KLongLoss:
    """The K_L efficiency correction: nature's ECL sees a K_L ``scale`` times as often as MC's.

    An MC event with n K_L clusters (truth ``mcKLclusters``) loses k of them,
    k ~ Binomial(n, 1 - scale), drawn from :func:`event_uniform` (reproducible, independent of
    the chunking). The lost energy, k/n of the K_L cluster energy ``mcE_KL``, leaves the
    visible energy and the ROE as in :class:`EnergyShift`, and nClusters drops by k. Event
    shapes keep the lost clusters (an approximation).
    """

    scale: float

    def __call__(self, cols: Columns) -> dict[str, np.ndarray]:
        """The columns after the loss."""
        from scipy import stats

        if self.scale == 1.0:
            return dict(cols)
        n = cols["mcKLclusters"].astype(np.int64)
        u = event_uniform(cols["__run__"], cols["__event__"], salt=130)
        k = np.where(n > 0, stats.binom.ppf(u, np.maximum(n, 1), 1.0 - self.scale), 0.0)
        k = np.clip(k, 0.0, n)
        d_e = -cols["mcE_KL"] * k / np.maximum(n, 1)
        return {
            **cols,
            **_visible_energy_shift(cols, d_e),
            "mcE_KL": cols["mcE_KL"] + d_e,
            "mcE_hadronic": cols["mcE_hadronic"] + d_e,
            "mcKLclusters": (n - k).astype(np.int32),
            "nClusters": (cols["nClusters"] - k).astype(cols["nClusters"].dtype),
        }


def corrected_inputs(cols: Columns, corrections: Mapping[str, float]) -> dict[str, np.ndarray]:
    """MC inputs with the nominal detector corrections (``ita.corrections``).

    The K_L efficiency (:class:`KLongLoss`), then the hadronic energy scale.
    """
    cols = KLongLoss(corrections["kl_efficiency_scale"])(cols)
    return EnergyShift("mcE_hadronic", corrections["hadronic_energy_scale"] - 1.0)(cols, 1.0)


@dataclass(frozen=True)
class HTAShift:
    """The HTA's inputs after the K_L efficiency and a hadronic energy scale, as the ITA's.

    The HTA tree carries, per event, the extra clusters' (not used by the tag or the kaon)
    energy from hadrons and from K_L in the lab (``mcEextra_hadronic``, ``mcEextra_KL``: the
    frame of ``E_extra``) and CM (``_cm``: the frame of the signal side's missing four-momentum)
    and their K_L count, and the whole event's (``mcE_hadronic``, ``mcE_KL``, ``mcKLclusters``,
    CM, for ``E_miss`` and ``nClusters``). An event loses k of its n K_L clusters,
    k ~ Binomial(n, 1 - ``kl_scale``) from the same :func:`event_uniform` as
    :class:`KLongLoss` (the extra clusters: the same quantile of their own count; with a
    correct tag every K_L cluster is extra, and both are equal). Then the remaining hadronic
    energy is scaled by ``energy_scale``. ``E_extra``, ``nExtraClusters``, ``E_miss``,
    ``nClusters``, ``E_miss_all`` and ``m2_miss_all`` (at fixed missing momentum) follow.
    """

    kl_scale: float
    energy_scale: float

    def __call__(self, cols: Columns) -> dict[str, np.ndarray]:
        """The columns after the shift."""
        from scipy import stats

        u = event_uniform(cols["__run__"], cols["__event__"], salt=130)

        def lost(n: np.ndarray) -> np.ndarray:
            n = n.astype(np.int64)
            if self.kl_scale == 1.0:
                return np.zeros(len(n))
            k = np.where(n > 0, stats.binom.ppf(u, np.maximum(n, 1), 1.0 - self.kl_scale), 0)
            return np.clip(k, 0, n) / np.maximum(n, 1)

        scale = self.energy_scale
        out: dict[str, np.ndarray] = {}

        def shift(hadronic: str, klong: str, fraction: np.ndarray) -> np.ndarray:
            # the lost K_L clusters leave, then the remaining hadronic energy is scaled
            had, kl = cols[hadronic], cols[klong]
            out[hadronic] = (had - kl * fraction) * scale
            out[klong] = kl * (1.0 - fraction) * scale
            return out[hadronic] - had

        f_extra, f_all = lost(cols["mcKLextraClusters"]), lost(cols["mcKLclusters"])
        k_extra = np.rint(f_extra * cols["mcKLextraClusters"])
        k_all = np.rint(f_all * cols["mcKLclusters"])
        d_lab = shift("mcEextra_hadronic", "mcEextra_KL", f_extra)
        d_cm = shift("mcEextra_hadronic_cm", "mcEextra_KL_cm", f_extra)
        d_all = shift("mcE_hadronic", "mcE_KL", f_all)
        e_miss = cols["E_miss_all"] - d_cm
        out |= {
            "mcKLextraClusters": cols["mcKLextraClusters"] - k_extra,
            "mcKLclusters": cols["mcKLclusters"] - k_all,
            "E_extra": cols["E_extra"] + d_lab,
            "nExtraClusters": cols["nExtraClusters"] - k_extra,
            "E_miss_all": e_miss,
            "m2_miss_all": cols["m2_miss_all"] + e_miss**2 - cols["E_miss_all"] ** 2,
            "E_miss": cols["E_miss"] - d_all,
            "nClusters": cols["nClusters"] - k_all,
        }
        return {**cols, **{k: np.asarray(v).astype(cols[k].dtype) for k, v in out.items()}}


def corrected_hta_inputs(cols: Columns, corrections: Mapping[str, float]) -> dict[str, np.ndarray]:
    """HTA MC inputs with the nominal detector corrections (``hta.corrections``)."""
    return HTAShift(corrections["kl_efficiency_scale"], corrections["hadronic_energy_scale"])(cols)


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

#: Every variation name, in histogram order (``_up`` and ``_down`` of each).
VARIATIONS = tuple(WEIGHT_VARIATIONS) + tuple(INPUT_VARIATIONS)
