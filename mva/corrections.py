"""The nominal detector corrections of the MC, as the training and the processors apply them.

Nature's detector differs from the MC's (``simulation.nature``); the analysis corrects its MC
by the scales the paper derived from control samples (``ita.corrections``, ``hta.corrections``):
B(D -> K_L X) as a weight, the K_L ECL efficiency and the hadronic energy scale as shifted
inputs. The BDTs are trained, and eta calibrated, on the same corrected MC the processors fill
(:func:`nominal_mc`), so that a model learns the inputs it is applied to and the signal region
eta > 0.92 holds 8 % of the produced signal as filled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Columns = Mapping[str, np.ndarray]


def nominal_mc(
    cols: Columns,
    corrections: Mapping[str, float],
    inputs: Callable[[Columns, Mapping[str, float]], dict[str, np.ndarray]],
    norm: float = 1.0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An MC chunk's nominal weight and inputs: every correction of ``corrections``.

    Args:
        cols: The selected events' columns (``__weight__``, ``mcDtoKL`` and what ``inputs``
            moves).
        corrections: ``d_to_kl_scale``, ``kl_efficiency_scale``, ``hadronic_energy_scale``.
        inputs: :func:`corrected_inputs` (ITA) or :func:`corrected_hta_inputs` (HTA).
        norm: The dataset's :func:`d_to_kl_norm` at ``d_to_kl_scale``.

    Returns:
        The MC weight times ``d_to_kl_scale`` per D -> K_L decay over ``norm``, and the
        corrected columns (their ``__weight__`` untouched).

    >>> cols = {"__weight__": np.array([1.0, 2.0]), "mcDtoKL": np.array([0, 2])}
    >>> w, _ = nominal_mc(cols, {"d_to_kl_scale": 1.5}, lambda c, _: dict(c), norm=1.25)
    >>> w.tolist()
    [0.8, 3.6]
    """
    scale = corrections["d_to_kl_scale"] ** cols["mcDtoKL"] / norm
    weight = cols["__weight__"].astype(np.float64) * scale
    return weight, inputs(cols, corrections)


def d_to_kl_norm(sum_weights: Sequence[float], scale: float) -> float:
    """The mean of ``scale ** mcDtoKL`` over a dataset's generated events.

    A correction of B(D -> K_L X) by ``scale`` is a change of branching fractions: the D
    mesons that do not decay to K_L X lose what those that do gain, and the number of B
    decays stays. Per event, ``scale`` per K_L from a D over this mean does that (for the
    dataset as a whole; with independent B decays, for each B). Without it the correction
    adds events: 8 % of the signal MC at 1.3 (24 % of the other B's decays hold a K_L from a
    D), 17 % of B+B- and 20 % of B0B0bar, which the templates and the eta calibration then
    carried, and nature, which scales B(D -> K_L X) at a fixed number of B decays, does not
    (the J/psi K+ embedding's data/MC was 0.90-0.96 in every run until stop 55).

    Args:
        sum_weights: The generated events' summed weights by their ``mcDtoKL`` (0, 1, ...;
            the catalogue's ``d_to_kl_sum_weights``); empty (data, or MC without this
            bookkeeping, e.g. basf2's): 1.
        scale: The correction's ``d_to_kl_scale``.

    >>> d_to_kl_norm([6.0, 3.0, 1.0], 1.3)
    1.159
    >>> d_to_kl_norm([], 1.3), d_to_kl_norm([5.0, 5.0], 1.0)
    (1.0, 1.0)
    """
    w = np.asarray(sum_weights, dtype=float)
    if not len(w) or w.sum() <= 0:
        return 1.0
    return float(np.sum(w * scale ** np.arange(len(w))) / w.sum())


#: The key under which a processor's or a training's configuration carries, per dataset, the
#: catalogue's ``d_to_kl_sum_weights`` (:func:`with_d_to_kl`).
D_TO_KL_SUMS = "d_to_kl_sum_weights"


def with_d_to_kl(cfg: Mapping[str, Any], catalogue: Mapping[str, Any]) -> dict[str, Any]:
    """An analysis section (``ita``, ``hta``) with the catalogue's D -> K_L bookkeeping.

    Args:
        cfg: The section (its ``corrections`` hold ``d_to_kl_scale``).
        catalogue: ``{dataset: entry}``; entries without ``d_to_kl_sum_weights`` get none.
    """
    sums = {name: list(e.get(D_TO_KL_SUMS, ())) for name, e in catalogue.items()}
    return {**cfg, D_TO_KL_SUMS: sums}


def dataset_norm(cfg: Mapping[str, Any], dataset: str) -> float:
    """The :func:`d_to_kl_norm` of ``dataset`` at the section's nominal ``d_to_kl_scale``."""
    sums = cfg.get(D_TO_KL_SUMS, {}).get(dataset, ())
    return d_to_kl_norm(sums, cfg["corrections"]["d_to_kl_scale"])


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
