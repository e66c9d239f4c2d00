"""The joint number density ("map"): signal yield by reconstructed fit bin and generated q2.

A map of one fit region has a row per reconstructed bin of the region (in the workspace's bin
order) and a column per q2gen bin of the published convention: one bin below 0 (events
without a generated q2) and 100 equal bins over 0-22.885 GeV^2 (arXiv:2507.12393). The run's
maps come from the processors' ``ita_on_map_signal_nominal`` and ``hta_map_signal_nominal``:
the signal fit templates (MC weights, corrections, the ITA/HTA overlap removed, scaled to the
data luminosity) split by q2gen, so each row sums to the template's bin. The published maps
(Belle II's signal MC, the reinterpretation's ``number_density_*.csv``) are vendored in
``knunu/data/`` with their provenance and SHA-256.

Regions carry the run's channel names; the published likelihood's channels are aliased to them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from knunu.errors import InputError
from knunu.fits.build import CHANNELS, HistogramFile
from knunu.processors.selection import Q2GEN_MAP_EDGES
from knunu.rundir import atomic_path

log = logging.getLogger(__name__)

#: q2gen bin edges of every map (GeV^2), and the bins' centres.
Q2_EDGES = np.asarray(Q2GEN_MAP_EDGES, dtype=float)
Q2_CENTRES = 0.5 * (Q2_EDGES[1:] + Q2_EDGES[:-1])

#: The map regions (the run's fit channels with signal) and the histogram each is cut from.
REGIONS: dict[str, str] = {
    "ita_on_sr": "ita_on_map",
    "ita_on_cr": "ita_on_map",
    "hta_sr": "hta_map",
}

#: The published likelihood's channels, by the region they are.
PUBLISHED_CHANNELS: dict[str, str] = {
    "A__Bsig_H_reconstructed_q2_vs_BDT2_Bplus2Kplus_v42_signal_inefficiency_zoomSR_Y4S": (
        "ita_on_sr"
    ),
    "B__Bsig_H_reconstructed_q2_vs_BDT2_Bplus2Kplus_v42_signal_inefficiency_zoomCR_Y4S": (
        "ita_on_cr"
    ),
    "sgn1_had": "hta_sr",
}

#: The vendored published maps (lorenzennio/knunu-reinterpretation-mini, scripts/data/, at
#: commit 065bce076279e04593220889f68176f8f4d63958, MIT) by region, with their SHA-256.
PUBLISHED_FILES: dict[str, tuple[str, str]] = {
    "ita_on_sr": (
        "number_density_ita_regA.csv",
        "ba6ecf3dc4ba7b5f74ae5f3b9f9bbbfd35bd0cae680af8b444e25ea2050f3366",
    ),
    "ita_on_cr": (
        "number_density_ita_regB.csv",
        "c8b7f5b29fbef0635565877a8b589b11c25c0d6043c412849d386bc9965ce3c9",
    ),
    "hta_sr": (
        "number_density_hta.csv",
        "2ef413de554d4d5553557e31c0f55e0f1afa01a52aafacc820d09dc72c41b4bb",
    ),
}


class Map(NamedTuple):
    """Signal yield per reconstructed bin (rows) and q2gen bin (columns) of one region."""

    region: str
    values: np.ndarray  # (rows, 101)
    variances: np.ndarray | None  # sum of squared weights; None where unknown
    source: str

    def normalised(self) -> np.ndarray:
        """Values over their total (a number density)."""
        total = self.values.sum()
        return self.values / total if total > 0 else self.values


def run_maps(histograms: str | Path) -> dict[str, Map]:
    """The run's maps from its histogram file.

    Raises:
        InputError: the file lacks the map histograms (processed before they existed).
    """
    hfile = HistogramFile(histograms)
    try:
        out = {}
        for region, name in REGIONS.items():
            values, variances = hfile.get(name, "signal", "nominal")
            rows = CHANNELS[region].eta_rows
            if rows is not None:  # (eta, q2rec, q2gen) -> the channel's rows, eta-major
                values = values[list(rows)].reshape(-1, values.shape[-1])
                variances = variances[list(rows)].reshape(-1, variances.shape[-1])
            if values.shape[-1] != len(Q2_EDGES) - 1:
                raise InputError(
                    f"{hfile.path}: histogram '{name}_signal_nominal' has {values.shape[-1]} "
                    f"q2gen bins, not {len(Q2_EDGES) - 1}"
                )
            out[region] = Map(region, values, variances, f"run: {hfile.path}")
        return out
    finally:
        hfile.close()


def _data_file(name: str) -> Path:
    return Path(str(resources.files("knunu").joinpath("data", name)))


def published_maps() -> dict[str, Map]:
    """The published maps, each checked against its recorded SHA-256.

    Raises:
        InputError: a vendored file is missing, altered, or not a (rows x 101) table.
    """
    out = {}
    for region, (name, digest) in PUBLISHED_FILES.items():
        path = _data_file(name)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot read the published map ({exc.strerror})") from None
        if hashlib.sha256(raw).hexdigest() != digest:
            raise InputError(f"{path}: SHA-256 differs from the vendored file's")
        rows = [r for r in csv.reader(io.StringIO(raw.decode())) if r]
        values = np.array([[float(v) for v in r] for r in rows])
        if values.ndim != 2 or values.shape[1] != len(Q2_EDGES) - 1:
            raise InputError(f"{path}: expected {len(Q2_EDGES) - 1} q2gen columns")
        out[region] = Map(region, values, None, f"published: {name}")
    return out


def write_maps(maps: dict[str, Map], directory: str | Path) -> list[Path]:
    """Write each map as CSV (the published layout: rows x 101, no header) and all as JSON.

    Returns:
        The files written (atomically).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for region, m in maps.items():
        path = directory / f"map_{region}.csv"
        with atomic_path(path) as tmp:
            np.savetxt(tmp, m.values, delimiter=",", fmt="%.10e")
        written.append(path)
    doc: dict[str, Any] = {
        "q2gen_edges": Q2_EDGES.tolist(),
        "maps": {
            region: {
                "source": m.source,
                "values": m.values.tolist(),
                "variances": None if m.variances is None else m.variances.tolist(),
            }
            for region, m in maps.items()
        },
    }
    path = directory / "maps.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    written.append(path)
    return written


class MapComparison(NamedTuple):
    """Ours against the published, both normalised to unit total per region."""

    region: str
    row_ratio: np.ndarray  # ours / published, per reconstructed bin
    q2_ours: np.ndarray  # normalised column sums
    q2_published: np.ndarray


def compare(ours: dict[str, Map], published: dict[str, Map]) -> dict[str, MapComparison]:
    """Per-region comparison of two sets of maps (regions both have)."""
    out = {}
    for region in sorted(set(ours) & set(published)):
        a, b = ours[region].normalised(), published[region].normalised()
        ra, rb = a.sum(axis=1), b.sum(axis=1)
        ratio = np.divide(ra, rb, out=np.full_like(ra, np.nan), where=rb > 0)
        out[region] = MapComparison(region, ratio, a.sum(axis=0), b.sum(axis=0))
    return out
