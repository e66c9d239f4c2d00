"""Histograms -> HistFactory specs for the ITA and HTA, and their correlated combination.

The histogram-file contract (what the processors write, one ROOT file, uproot-readable):

- keys ``{histogram}_{sample}_{variation}``; ``variation`` is ``nominal`` or
  ``<catalogue variation>_up`` / ``_down``; the observed data are sample ``data``, ``nominal``;
- ``ita_on`` and ``ita_off``: 2D, eta(BDT2) edges {0.92, 0.94, 0.96, 0.98, 1.00} x q2rec edges
  {-1, 4, 8, 25} GeV^2; ``hta``: 1D, 6 bins of eta(BDTh);
- Weight storage: sum of weights and sum of squared weights (MC statistical uncertainty).

Fit channels follow the published layout: on resonance eta > 0.94 as 9 bins (eta-major) and
0.92-0.94 as 3 bins, off resonance the same (continuum and tau pairs only), HTA 6 bins.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyhf
import uproot

from knunu.errors import InputError, WorkspaceError, first_line
from knunu.fits.catalogue import ANALYSES, Systematic
from knunu.rundir import input_file
from knunu.samples import BACKGROUNDS, OFFRES, SIGNAL

log = logging.getLogger(__name__)

ITA_SAMPLES = (SIGNAL, *BACKGROUNDS)
ITA_OFFRES_SAMPLES = OFFRES
HTA_SAMPLES = ("signal", "bbbar", "uds", "ccbar")
POI = "mu"


class ChannelLayout(NamedTuple):
    """How one fit channel is cut out of a processor histogram."""

    analysis: str
    histogram: str
    eta_rows: tuple[int, ...] | None  # rows of the first (eta) axis, None: the whole 1D histogram
    samples: tuple[str, ...]


#: The fit channels, in workspace order.
CHANNELS: dict[str, ChannelLayout] = {
    "ita_on_sr": ChannelLayout("ita", "ita_on", (1, 2, 3), ITA_SAMPLES),
    "ita_on_cr": ChannelLayout("ita", "ita_on", (0,), ITA_SAMPLES),
    "ita_off_sr": ChannelLayout("ita", "ita_off", (1, 2, 3), ITA_OFFRES_SAMPLES),
    "ita_off_cr": ChannelLayout("ita", "ita_off", (0,), ITA_OFFRES_SAMPLES),
    "hta_sr": ChannelLayout("hta", "hta", None, HTA_SAMPLES),
}


class Kept(NamedTuple):
    """A channel cut to the bins that carry information (:func:`drop_empty_bins`)."""

    samples: list[dict[str, Any]]
    observed: list[float]
    bins: np.ndarray  # the kept bins' indices
    members: list[list[int]]  # the original bins each kept bin holds (more than one if merged)


#: What the fit plots label each channel's bins with (workspaces/bins.json beside the workspaces).
BINS_FILE = "bins.json"


class HistogramFile:
    """Read access to a processors' histogram file, with one-line errors naming file and key."""

    def __init__(self, path: str | Path) -> None:
        self.path = input_file(path)  # not a directory, FIFO or link loop
        try:
            self._file = uproot.open(self.path)
        except FileNotFoundError:
            raise InputError(f"{self.path}: file not found") from None
        except Exception as exc:  # uproot raises several types for a file that is not ROOT
            raise InputError(f"{self.path}: not a readable ROOT file ({first_line(exc)})") from None
        self.keys = {k.split(";")[0] for k in self._file.keys(cycle=True)}

    def get(self, histogram: str, sample: str, variation: str) -> tuple[np.ndarray, np.ndarray]:
        """Values and variances of ``{histogram}_{sample}_{variation}`` (no flow bins)."""
        key = f"{histogram}_{sample}_{variation}"
        if key not in self.keys:
            raise InputError(f"{self.path}: histogram '{key}' is missing")
        obj = self._file[key]
        values = np.asarray(obj.values(flow=False), dtype=float)
        variances = obj.variances(flow=False)
        variances = values.copy() if variances is None else np.asarray(variances, dtype=float)
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(variances))):
            raise InputError(f"{self.path}: histogram '{key}' holds NaN or inf")
        return values, variances

    def edges(self, histogram: str) -> list[np.ndarray]:
        """Bin edges of each axis of ``{histogram}_data_nominal``."""
        key = f"{histogram}_data_nominal"
        if key not in self.keys:
            raise InputError(f"{self.path}: histogram '{key}' is missing")
        return [np.asarray(axis.edges(flow=False)) for axis in self._file[key].axes]

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _cut(values: np.ndarray, layout: ChannelLayout) -> list[float]:
    if layout.eta_rows is None:
        return [float(v) for v in values.ravel()]
    return [float(v) for v in values[list(layout.eta_rows), :].ravel()]


def channel_bins(hfile: HistogramFile, layout: ChannelLayout) -> dict[str, Any]:
    """What each of a channel's bins holds, for plots: eta slice (group) and range (label).

    >>> layout = ChannelLayout("ita", "ita_on", (1, 2), ())
    >>> edges = [np.array([0.92, 0.94, 0.96, 0.98]), np.array([-1.0, 4.0, 25.0])]
    >>> _describe(edges, layout)["bins"][:3]  # doctest: +NORMALIZE_WHITESPACE
    [{'group': 'eta(BDT2) [0.94, 0.96]', 'label': '[-1, 4]'}, {'group': 'eta(BDT2) [0.94, 0.96]',
      'label': '[4, 25]'}, {'group': 'eta(BDT2) [0.96, 0.98]', 'label': '[-1, 4]'}]
    """
    return _describe(hfile.edges(layout.histogram), layout)


def _describe(edges: list[np.ndarray], layout: ChannelLayout) -> dict[str, Any]:
    if layout.eta_rows is None:
        (eta,) = edges
        name = "eta(BDTh)" if layout.analysis == "hta" else "eta"
        bins = [{"group": "", "label": f"[{a:.2f}, {b:.2f}]"} for a, b in itertools.pairwise(eta)]
        return {"axis": name, "bins": bins}
    eta, q2 = edges
    bins = [
        {
            "group": f"eta(BDT2) [{eta[r]:.2f}, {eta[r + 1]:.2f}]",
            "label": f"[{q2[c]:g}, {q2[c + 1]:g}]",
        }
        for r in layout.eta_rows
        for c in range(len(q2) - 1)
    ]
    return {"axis": "q2rec [GeV^2]", "bins": bins}


def _kept_bins(described: dict[str, Any], members: list[list[int]]) -> dict[str, Any]:
    """The description of the kept bins; a merged bin is labelled with every range it holds."""
    full = described["bins"]

    def label(i: int, first: int) -> str:  # a member from another eta slice names it
        same = full[i]["group"] == full[first]["group"]
        return full[i]["label"] if same else f"{full[i]['group']} {full[i]['label']}".strip()

    bins = [
        {"group": full[m[0]]["group"], "label": " + ".join(label(i, m[0]) for i in m)}
        for m in members
    ]
    return {**described, "bins": bins}


def load_bins(workspace: str | Path) -> dict[str, Any]:
    """The bin descriptions written beside a workspace ({} if there are none, e.g. published)."""
    path = Path(workspace).parent / BINS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _relative_effect(nominal: np.ndarray, *others: np.ndarray) -> float:
    scale = np.where(nominal > 0, nominal, 1.0)
    return float(max(np.max(np.abs(o - nominal) / scale) for o in others))


def build_spec(
    hfile: HistogramFile,
    analysis: str,
    catalogue: tuple[Systematic, ...],
    prune_threshold: float = 0.0,
    split: str | None = None,
) -> dict[str, Any]:
    """The HistFactory spec of one analysis, validated against pyhf's schema.

    :func:`build_spec_and_bins` also says what each bin holds.

    Args:
        hfile: The processors' histograms.
        analysis: ``ita`` or ``hta``.
        catalogue: The systematics catalogue.
        prune_threshold: Modifiers whose largest relative effect on a sample's bins is below
            this are left out (each pruned one is logged).
        split: Build from the histograms of one consistency split (``{histogram}_{split}``,
            nominal only: pass a catalogue without shape systematics).

    Raises:
        InputError: a histogram the catalogue asks for is missing or not finite.
        WorkspaceError: the spec fails pyhf's schema.
    """
    return build_spec_and_bins(hfile, analysis, catalogue, prune_threshold, split)[0]


def build_spec_and_bins(
    hfile: HistogramFile,
    analysis: str,
    catalogue: tuple[Systematic, ...],
    prune_threshold: float = 0.0,
    split: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`build_spec` and, per channel, what its kept bins hold (:func:`channel_bins`).

    A channel left out for want of any MC (data in a channel no sample populates: a thin
    simulation, e.g. one off-resonance event in a control region) is described by its events
    alone (``{"left_out": n}``), for the caller to count them.
    """
    if analysis not in ANALYSES:
        raise WorkspaceError(f"unknown analysis {analysis!r}")
    channels, observations, described = [], [], {}
    for cname, layout in CHANNELS.items():
        if layout.analysis != analysis:
            continue
        if split is not None:
            layout = layout._replace(histogram=f"{layout.histogram}_{split}")
        samples = []
        for sample in layout.samples:
            nom_full, var_full = hfile.get(layout.histogram, sample, "nominal")
            nominal = np.asarray(_cut(nom_full, layout))
            modifiers: list[dict[str, Any]] = []
            if sample == SIGNAL:
                modifiers.append({"name": POI, "type": "normfactor", "data": None})
            rows = [
                row
                for row in catalogue
                if sample in row.samples.get(analysis, ())
                and (row.channels is None or cname in row.channels)
            ]
            if not any(row.mc_statistics for row in rows):
                modifiers.append(
                    {
                        "name": f"staterror_{cname}_{sample}",
                        "type": "staterror",
                        "data": _cut(np.sqrt(var_full), layout),
                    }
                )
            for row in rows:
                modifiers += _modifier(hfile, row, layout, sample, nominal, prune_threshold, cname)
            samples.append({"name": sample, "data": nominal.tolist(), "modifiers": modifiers})
        data_values, _ = hfile.get(layout.histogram, "data", "nominal")
        observed = np.asarray(_cut(data_values, layout))
        # a thin channel may hold events and no MC: left out of the fit, its events counted
        kept = drop_empty_bins(cname, samples, observed, hfile.path, True, "drop")
        if kept is None:
            if observed.sum() > 0:  # left out with its events: the caller counts them
                described[cname] = {"left_out": float(observed.sum())}
            continue
        channels.append({"name": cname, "samples": kept.samples})
        observations.append({"name": cname, "data": kept.observed})
        described[cname] = _kept_bins(channel_bins(hfile, layout), kept.members)
    if not channels:
        raise WorkspaceError(f"{hfile.path}: every {analysis} channel is empty")
    spec = _workspace_spec(channels, observations, f"{analysis} spec from {hfile.path}")
    return spec, described


def drop_empty_bins(
    cname: str,
    samples: list[dict[str, Any]],
    observed: np.ndarray,
    path: Path,
    merge: bool = False,
    unfittable: str = "error",
) -> Kept | None:
    """Drop bins no sample populates, then samples empty in every kept bin (each logged).

    Such bins carry no information when nothing is observed there (small-scale runs). Events
    observed in a bin without any expectation are never dropped: with ``merge`` the bin joins
    the kept bin before it (the first kept one if none is before), its data and every
    sample's yields, systematic templates and MC errors (in quadrature) added (a coarser bin
    where the simulation is too thin for the binning); without, it is an error.

    Returns:
        Samples and observed data cut to the kept bins, the kept bins' indices and the
        original bins each holds; None when the channel is empty.

    A channel with events and no expectation in any bin cannot be fitted: an error, or
    (``unfittable="drop"``, as :func:`build_spec_and_bins` builds) left out with a warning,
    the caller counting its events.

    Raises:
        WorkspaceError: events observed in a bin that no sample populates (without ``merge``,
            or when no bin has an expectation and ``unfittable`` is ``"error"``).
    """
    total = np.sum([s["data"] for s in samples], axis=0)
    keep = total > 0
    lost = np.flatnonzero(~keep & (observed > 0))
    if not _fittable(cname, keep, lost, observed, path, merge, unfittable):
        return None
    dropped = np.flatnonzero(~keep & (observed <= 0))
    if len(dropped):
        log.warning("channel %s: bins %s dropped (empty)", cname, dropped.tolist())
    idx = np.flatnonzero(keep)
    if len(lost):
        log.warning(
            "channel %s: bins %s merged into the bin before them (%g events observed where no "
            "sample expects any)", cname, lost.tolist(), float(observed[lost].sum()),
        )  # fmt: skip
        target = np.maximum(np.cumsum(keep) - 1, 0)  # the last kept bin at or before each bin
        group = np.where(keep | (observed > 0), target, -1)
        cut = _merger(group, len(idx))
        members = [np.flatnonzero(group == k).tolist() for k in range(len(idx))]
    else:
        cut = _indexer(idx)
        members = [[int(i)] for i in idx]
    out, empty = [], []
    for sample in samples:
        data = cut(sample["data"])
        if not np.any(data > 0):
            empty.append(sample["name"])
            continue
        mods = [_cut_modifier(m, cut) for m in sample["modifiers"]]
        out.append({**sample, "data": data.tolist(), "modifiers": mods})
    if empty:
        log.warning("channel %s: samples %s dropped (empty in every bin)", cname, ", ".join(empty))
    return Kept(out, cut(observed).tolist(), idx, members)


def _fittable(
    cname: str,
    keep: np.ndarray,
    lost: np.ndarray,
    observed: np.ndarray,
    path: Path,
    merge: bool,
    unfittable: str,
) -> bool:
    """Whether a channel can be fitted (False: left out, logged); else :class:`WorkspaceError`.

    ``keep``: the bins some sample populates; ``lost``: bins with events and no expectation.
    """
    if len(lost) and not keep.any() and unfittable == "drop":
        log.warning(
            "channel %s left out: %g events observed and no sample expects any in any bin",
            cname,
            float(observed.sum()),
        )
        return False
    if len(lost) and not (merge and keep.any()):
        raise WorkspaceError(
            f"{path}: channel {cname} bin {lost[0]}: {observed[lost[0]]:g} events observed "
            "where no sample expects any (too little simulation for this binning)"
        )
    if not keep.any():
        log.warning("channel %s dropped: no sample populates any bin", cname)
        return False
    return True


def _indexer(idx: np.ndarray) -> Callable[..., np.ndarray]:
    def cut(values: Any, quadrature: bool = False) -> np.ndarray:
        return np.asarray(values, dtype=float)[idx]

    return cut


def _merger(group: np.ndarray, n: int) -> Callable[..., np.ndarray]:
    member = group >= 0

    def cut(values: Any, quadrature: bool = False) -> np.ndarray:
        values = np.asarray(values, dtype=float)[member]
        out = np.zeros(n)
        np.add.at(out, group[member], values**2 if quadrature else values)
        return np.sqrt(out) if quadrature else out

    return cut


def _cut_modifier(modifier: dict[str, Any], cut: Callable[..., np.ndarray]) -> dict[str, Any]:
    data = modifier["data"]
    if modifier["type"] == "staterror":
        return {**modifier, "data": cut(data, quadrature=True).tolist()}
    if modifier["type"] == "histosys":
        return {**modifier, "data": {k: cut(v).tolist() for k, v in data.items()}}
    return modifier


def _workspace_spec(channels: list, observations: list, what: str) -> dict[str, Any]:
    """A complete workspace spec, validated against pyhf's schema."""
    spec = {
        "channels": channels,
        "observations": observations,
        "measurements": [{"name": "knunu", "config": {"poi": POI, "parameters": []}}],
        "version": "1.0.0",
    }
    try:
        pyhf.Workspace(spec)
    except pyhf.exceptions.InvalidSpecification as exc:
        raise WorkspaceError(f"{what} is invalid: {exc}") from None
    return spec


def _modifier(
    hfile: HistogramFile,
    row: Systematic,
    layout: ChannelLayout,
    sample: str,
    nominal: np.ndarray,
    threshold: float,
    cname: str,
) -> list[dict[str, Any]]:
    if row.type == "normsys":
        assert row.size is not None  # guaranteed by the schema
        if row.size < threshold:
            log.info("pruned %s on %s/%s: size %.2g", row.name, cname, sample, row.size)
            return []
        return [
            {
                "name": row.name,
                "type": "normsys",
                "data": {"hi": 1.0 + row.size, "lo": 1.0 - row.size},
            }
        ]
    up = np.asarray(_cut(hfile.get(layout.histogram, sample, f"{row.variation}_up")[0], layout))
    down = np.asarray(_cut(hfile.get(layout.histogram, sample, f"{row.variation}_down")[0], layout))
    effect = _relative_effect(nominal, up, down)
    if effect < threshold:
        log.info("pruned %s on %s/%s: largest effect %.2g", row.name, cname, sample, effect)
        return []
    return [
        {
            "name": row.name,
            "type": "histosys",
            "data": {"hi_data": up.tolist(), "lo_data": down.tolist()},
        }
    ]


def combine(specs: dict[str, dict[str, Any]], catalogue: tuple[Systematic, ...]) -> dict[str, Any]:
    """One spec from per-analysis specs: correlated parameters shared, the rest renamed.

    Uncorrelated catalogue parameters become ``<analysis>_<name>`` (staterror names are
    already unique per channel and sample); ``mu`` and the correlated names stay shared.

    Raises:
        WorkspaceError: channel names clash, or the combined spec fails pyhf's schema.
    """
    shared = {POI} | {r.name for r in catalogue if r.correlated}
    channels, observations = [], []
    for analysis, spec in specs.items():
        for channel in spec["channels"]:
            samples = []
            for sample in channel["samples"]:
                mods = [
                    m
                    if m["name"] in shared or m["type"] == "staterror"
                    else {**m, "name": f"{analysis}_{m['name']}"}
                    for m in sample["modifiers"]
                ]
                samples.append({**sample, "modifiers": mods})
            channels.append({"name": channel["name"], "samples": samples})
        observations += spec["observations"]
    names = [c["name"] for c in channels]
    if len(set(names)) != len(names):
        raise WorkspaceError(f"channel names clash in the combination: {sorted(names)}")
    return _workspace_spec(channels, observations, "combined spec")


def write_workspaces(
    histograms: str | Path,
    out_dir: str | Path,
    catalogue: tuple[Systematic, ...],
    prune_threshold: float = 0.0,
    analyses: tuple[str, ...] = ANALYSES,
) -> dict[str, Path]:
    """Build the workspaces of ``analyses`` from a histogram file and write them as JSON.

    Returns:
        Paths by name (each analysis, and ``combined`` when every analysis is built), written
        atomically into ``out_dir`` with what each bin holds (:data:`BINS_FILE`).
    """
    from knunu.rundir import write_json

    hfile = HistogramFile(histograms)
    specs, bins = {}, {}
    try:
        for a in analyses:
            specs[a], described = build_spec_and_bins(hfile, a, catalogue, prune_threshold)
            bins.update(described)
    finally:
        hfile.close()
    if set(analyses) == set(ANALYSES):
        specs["combined"] = combine({a: specs[a] for a in ANALYSES}, catalogue)
    write_json(Path(out_dir) / BINS_FILE, bins)
    return {name: write_json(Path(out_dir) / f"{name}.json", spec) for name, spec in specs.items()}


def left_out(bins: dict[str, Any]) -> dict[str, float]:
    """Events of each channel left out of the workspaces for want of any MC.

    ``bins``: what :data:`BINS_FILE` holds.

    >>> left_out({"ita_off_cr": {"left_out": 1.0}, "ita_on_sr": {"bins": []}})
    {'ita_off_cr': 1.0}
    """
    return {c: float(d["left_out"]) for c, d in bins.items() if "left_out" in d}


def analyses_in_file(histograms: str | Path) -> tuple[str, ...]:
    """The analyses whose fit histograms a file holds (``ita_on_*`` -> ita, ``hta_*`` -> hta)."""
    hfile = HistogramFile(histograms)
    try:
        have = {CHANNELS[c].analysis for c in CHANNELS if _has_channel(hfile, CHANNELS[c])}
    finally:
        hfile.close()
    return tuple(a for a in ANALYSES if a in have)


def _has_channel(hfile: HistogramFile, layout: ChannelLayout) -> bool:
    return f"{layout.histogram}_data_nominal" in hfile.keys
