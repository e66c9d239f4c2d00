"""Write a small histogram file in the processors' contract (see knunu.fits.build)."""

from __future__ import annotations

import itertools
from pathlib import Path

import hist
import numpy as np
import uproot

from knunu.fits.build import HTA_SAMPLES, ITA_OFFRES_SAMPLES, ITA_SAMPLES
from knunu.fits.catalogue import Systematic

ETA_EDGES = [0.92, 0.94, 0.96, 0.98, 1.00]
Q2_EDGES = [-1.0, 4.0, 8.0, 25.0]

# Expected yields per sample: a signal that rises with eta, backgrounds that fall.
ITA_SCALE = {
    "signal": 8.0,
    "charged": 300.0,
    "mixed": 180.0,
    "uubar": 40.0,
    "ddbar": 12.0,
    "ssbar": 70.0,
    "ccbar": 150.0,
    "taupair": 8.0,
}
HTA_SCALE = {"signal": 1.5, "bbbar": 25.0, "uds": 6.0, "ccbar": 5.0}
MC_WEIGHT = 0.2  # variance = weight x value: MC five times the data


def _shape_2d(sample: str, off: bool) -> np.ndarray:
    eta = np.arange(4)[:, None]
    q2 = np.array([[0.8, 1.0, 1.3]])
    if sample == "signal":
        base = (1.0 + eta) * q2
    else:
        base = (2.0 - 0.4 * eta) * q2[:, ::-1] * (1.0 + 0.1 * (sample in ITA_OFFRES_SAMPLES))
    return base * (0.12 if off else 1.0)


def expected(catalogue: tuple[Systematic, ...]) -> dict[str, np.ndarray]:
    """Nominal and varied expected histograms, by file key."""
    out: dict[str, np.ndarray] = {}
    plan = [
        ("ita_on", ITA_SAMPLES, False),
        ("ita_off", ITA_OFFRES_SAMPLES, True),
        ("hta", HTA_SAMPLES, None),
    ]
    for name, samples, off in plan:
        for sample in samples:
            if off is None:
                nominal = HTA_SCALE[sample] * (
                    np.linspace(0.5, 2.0, 6) if sample == "signal" else np.linspace(2.0, 0.6, 6)
                )
            else:
                nominal = ITA_SCALE[sample] * _shape_2d(sample, off)
            out[f"{name}_{sample}_nominal"] = nominal
            analysis = "hta" if name == "hta" else "ita"
            for k, row in enumerate(r for r in catalogue if r.type == "histosys"):
                tilt = np.linspace(-1.0, 1.0, nominal.size).reshape(nominal.shape)
                effect = 0.03 + 0.01 * (k % 4)
                if sample in row.samples.get(analysis, ()):
                    out[f"{name}_{sample}_{row.variation}_up"] = nominal * (1 + effect * tilt)
                    out[f"{name}_{sample}_{row.variation}_down"] = nominal * (1 - effect * tilt)
    return out


def write_histogram_file(
    path: Path, catalogue: tuple[Systematic, ...], mu: float = 1.0, seed: int | None = None
) -> dict[str, np.ndarray]:
    """Write the file; data are the expectation at ``mu`` (Asimov) or, with a seed, Poisson."""
    hists = expected(catalogue)
    rng = np.random.default_rng(seed)
    for name, samples in (
        ("ita_on", ITA_SAMPLES),
        ("ita_off", ITA_OFFRES_SAMPLES),
        ("hta", HTA_SAMPLES),
    ):
        total = sum(hists[f"{name}_{s}_nominal"] * (mu if s == "signal" else 1.0) for s in samples)
        hists[f"{name}_data_nominal"] = total if seed is None else rng.poisson(total) * 1.0
    with uproot.recreate(path) as f:
        for key, values in hists.items():
            if values.ndim == 2:
                h = hist.Hist(
                    hist.axis.Variable(ETA_EDGES, name="eta"),
                    hist.axis.Variable(Q2_EDGES, name="q2rec"),
                    storage=hist.storage.Weight(),
                )
            else:
                h = hist.Hist(
                    hist.axis.Regular(6, 0.4, 1.0, name="eta"), storage=hist.storage.Weight()
                )
            view = h.view()
            view.value = values
            view.variance = values * (1.0 if "_data_" in key else MC_WEIGHT)
            f[key] = h
        _write_maps(f, hists)
    return hists


def _write_maps(f: uproot.WritableDirectory, hists: dict[str, np.ndarray]) -> None:
    """The signal templates split by q2gen (the reinterpretation map): the SM spectrum,
    harder in the lower q2rec bins."""
    from knunu.processors.selection import Q2GEN_MAP_EDGES
    from knunu.simulation.signal import branching_fraction

    edges = np.asarray(Q2GEN_MAP_EDGES)
    spectrum = np.array(
        [branching_fraction(lo, hi, 11) if lo >= 0 else 0.0 for lo, hi in itertools.pairwise(edges)]
    )
    centres = 0.5 * (edges[:-1] + edges[1:])
    for key, rows in (("ita_on", 3), ("hta", 1)):
        nominal = hists[f"{key}_signal_nominal"]
        tilt = np.exp(-np.outer(np.arange(rows) - 1.0, centres) / 10.0)  # per q2rec column
        shape = spectrum * tilt  # (rows, 101)
        shape /= shape.sum(axis=1, keepdims=True)
        values = nominal[..., None] * (shape if rows > 1 else shape[0])
        axes = (
            [hist.axis.Variable(ETA_EDGES), hist.axis.Variable(Q2_EDGES)]
            if rows > 1
            else [hist.axis.Regular(6, 0.4, 1.0)]
        )
        h = hist.Hist(*axes, hist.axis.Variable(edges), storage=hist.storage.Weight())
        view = h.view()
        view.value = values
        view.variance = values * MC_WEIGHT
        f[f"{key}_map_signal_nominal"] = h
