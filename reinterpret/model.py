"""An alternative signal model written into the likelihood as plain HistFactory samples.

The signal template of every channel with a map is replaced by one sample per basis term of
the alternative model: the map's row fractions times the term's weight per q2gen bin (its rate
over the rate the signal MC was generated with), scaled to the channel's SM template, so that
weights of 1 give the SM template back bin by bin. A model whose rate is a quadratic form in
its couplings (Weak Effective Theory: |C_V|^2, |C_S|^2, |C_T|^2 multiply three q2 spectra that
do not interfere) is linear in the squared couplings: each term is a sample with its own
``normfactor``. Form-factor parameters enter as ``histosys`` nuisances along the eigenvectors
of their covariance (each +-1 sigma), shared by every term and channel; the SM form-factor
systematics of the template (``corr_ff_*``) leave with it. Every other modifier of the SM
signal is carried over, its variations scaled bin by bin to the new template; the signal's MC
statistical error keeps its relative size (the same MC events, reweighted). Nothing here is a
custom modifier: the workspace written out validates against pyhf's schema and any HistFactory
tool reads it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyhf

from knunu.errors import InputError, WorkspaceError
from knunu.reinterpret.maps import PUBLISHED_CHANNELS, REGIONS, Map

log = logging.getLogger(__name__)

#: Signal sample names (knunu's and the published likelihood's).
SIGNAL_SAMPLES = ("signal", "sgn_1_had")
#: The SM template's form-factor systematics, replaced by the alternative's own.
SM_FORM_FACTOR = ("corr_ff_c1", "corr_ff_c2", "corr_ff_c3")
#: The SM signal strength.
SM_POI = "mu"


class Term(NamedTuple):
    """One sample of the alternative signal: a normfactor and its q2gen weights.

    ``weights`` are per unit of the normfactor: the term's rate in each q2gen bin of the map
    over the generated (null) rate there. ``variations`` maps a nuisance name to the weights
    at +1 and -1 sigma. ``own_staterror``: the term gets its own ``staterror`` from the
    map's variances (a narrow resonance reads one q2gen column, whose MC error is its own);
    otherwise it shares the SM signal's, at the SM template's relative size.
    """

    name: str
    weights: np.ndarray
    variations: Mapping[str, tuple[np.ndarray, np.ndarray]] = {}
    own_staterror: bool = False


def region_of(channel: str) -> str | None:
    """The map region of a workspace channel (None: not a signal region with a map)."""
    if channel in REGIONS:
        return channel
    return PUBLISHED_CHANNELS.get(channel)


def _align(m: Map, template: np.ndarray, channel: str) -> np.ndarray:
    """Map rows in the channel's bin order (a channel may have lost empty bins).

    Map and template may differ by a luminosity factor (the measurement's templates are
    scaled to 362 fb^-1), so their shapes are compared: the map's row sums over their total
    against the template over its total (bins dropped as empty held no signal). A map that
    is not the template split by q2gen is refused (a relative 1e-4 allows the published
    map's own rounding).

    Raises:
        InputError: no order-preserving match of the map's rows to the channel's bins.
    """
    rows = m.values.sum(axis=1)
    if rows.sum() <= 0 or template.sum() <= 0:
        raise InputError(f"channel {channel}: the map or the signal template is empty")
    a, b = rows / rows.sum(), template / template.sum()
    idx, r = [], 0
    for value in b:
        while r < len(a) and not np.isclose(a[r], value, rtol=1e-4, atol=1e-12):
            r += 1
        if r == len(a):
            raise InputError(
                f"channel {channel}: its {len(template)} signal bins do not match the map's "
                f"{len(rows)} rows (map and template from different productions?)"
            )
        idx.append(r)
        r += 1
    return np.asarray(idx)


def _templates(
    m: Map, template: np.ndarray, weights: np.ndarray, channel: str
) -> tuple[np.ndarray, np.ndarray]:
    """The term's template and its MC variance from the map, normalised to ``template``."""
    idx = _align(m, template, channel)
    values = m.values[idx]
    rows = values.sum(axis=1)
    bad = (template > 0) & (rows <= 0)
    if bad.any():
        raise InputError(
            f"channel {channel}: bin {int(np.flatnonzero(bad)[0])} has signal but its map row "
            "is empty"
        )
    scale = np.divide(template, rows, out=np.zeros_like(template), where=rows > 0)
    out = scale * (values @ weights)
    var = np.zeros_like(out)
    if m.variances is not None:
        var = scale**2 * (m.variances[idx] @ (weights**2))
    return out, var


def alternative_workspace(
    workspace: pyhf.Workspace,
    maps: Mapping[str, Map],
    terms: Sequence[Term],
    *,
    keep_sm_signal: bool = False,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    measurement: str = "alternative",
) -> pyhf.Workspace:
    """The workspace with its signal replaced (or joined, ``keep_sm_signal``) by ``terms``.

    Args:
        workspace: The SM workspace (published or the run's).
        maps: Map per region (:mod:`knunu.reinterpret.maps`).
        terms: The alternative signal's samples; the first term's normfactor is the POI.
        keep_sm_signal: Keep the SM signal at mu = 1 (fixed) next to the new terms (a new
            particle on top of the SM decay); otherwise the terms replace it.
        bounds: Normfactor bounds by term name (default (0, 100)).
        measurement: Name of the new measurement.

    Raises:
        WorkspaceError: the result fails pyhf's schema, or no channel has a signal.
        InputError: a signal channel has no map, or map and template disagree in shape.
    """
    spec = copy.deepcopy(dict(workspace))
    bounds = dict(bounds or {})
    n_signal = 0
    for channel in spec["channels"]:
        signal = [s for s in channel["samples"] if s["name"] in SIGNAL_SAMPLES]
        if not signal:
            continue
        region = region_of(channel["name"])
        if region is None or region not in maps:
            raise InputError(f"channel {channel['name']}: signal without a map")
        n_signal += 1
        _replace_signal(channel, signal[0], maps[region], terms, keep_sm_signal)
    if not n_signal:
        raise WorkspaceError("alternative model: no channel of the workspace has a signal")
    params = [
        {"name": t.name, "bounds": [list(bounds.get(t.name, (0.0, 100.0)))], "inits": [1.0]}
        for t in terms
    ]
    if keep_sm_signal:
        params.append({"name": SM_POI, "fixed": True, "inits": [1.0]})
    old = spec["measurements"][0]["config"]["parameters"]
    params += [p for p in old if p["name"] != SM_POI]
    spec["measurements"] = [
        {"name": measurement, "config": {"poi": terms[0].name, "parameters": params}}
    ]
    try:
        return pyhf.Workspace(spec)
    except pyhf.exceptions.InvalidSpecification as exc:
        raise WorkspaceError(f"alternative model: invalid workspace ({exc})") from None


def _replace_signal(
    channel: dict[str, Any],
    sm: dict[str, Any],
    region_map: Map,
    terms: Sequence[Term],
    keep_sm_signal: bool,
) -> None:
    """One channel's SM signal sample ``sm`` replaced (or joined) by the terms' samples."""
    name = channel["name"]
    template = np.asarray(sm["data"], dtype=float)
    mods = [m for m in sm["modifiers"] if m["name"] not in SM_FORM_FACTOR]
    stat = [m for m in mods if m["type"] == "staterror"]
    rel = np.zeros_like(template)
    if stat:
        rel = np.divide(
            np.asarray(stat[0]["data"], dtype=float),
            template,
            out=np.zeros_like(template),
            where=template > 0,
        )
    shared = [t for t in terms if not t.own_staterror] + ([sm] if keep_sm_signal else [])
    share = 1.0 / np.sqrt(max(len(shared), 1))
    built = {t.name: _templates(region_map, template, np.asarray(t.weights), name) for t in terms}
    # the samples sharing the SM signal's staterror: sigma_s = rel x combined / sqrt(n)
    # each, so that pyhf's combined width (quadrature sum over the sum) stays rel
    combined = sum(
        (built[t.name][0] for t in terms if not t.own_staterror), np.zeros_like(template)
    ) + (template if keep_sm_signal else 0.0)
    shared_width = (rel * combined * share).tolist()
    new = []
    for term in terms:
        values, var = built[term.name]
        ratio = np.divide(values, template, out=np.ones_like(values), where=template > 0)
        out_mods = [_term_modifier(m, term, name, ratio, var, shared_width) for m in mods]
        for nuisance, (hi_w, lo_w) in term.variations.items():
            hi = _templates(region_map, template, np.asarray(hi_w), name)[0]
            lo = _templates(region_map, template, np.asarray(lo_w), name)[0]
            out_mods.append(
                {
                    "name": nuisance,
                    "type": "histosys",
                    "data": {"hi_data": hi.tolist(), "lo_data": lo.tolist()},
                }
            )
        new.append(
            {"name": f"{sm['name']}_{term.name}", "data": values.tolist(), "modifiers": out_mods}
        )
    if keep_sm_signal:
        for mod in sm["modifiers"]:
            if mod["type"] == "staterror" and not all(t.own_staterror for t in terms):
                mod["data"] = list(shared_width)
    rest = [s for s in channel["samples"] if s is not sm or keep_sm_signal]
    channel["samples"] = rest + new


def _term_modifier(
    mod: dict[str, Any],
    term: Term,
    channel: str,
    ratio: np.ndarray,
    var: np.ndarray,
    shared_width: list[float],
) -> dict[str, Any]:
    """The SM signal's modifier ``mod`` as the term's: POI renamed, shapes and widths scaled."""
    mod = copy.deepcopy(mod)
    if mod["type"] == "normfactor" and mod["name"] == SM_POI:
        mod["name"] = term.name
    elif mod["type"] == "histosys":
        for key in ("hi_data", "lo_data"):
            mod["data"][key] = (np.asarray(mod["data"][key]) * ratio).tolist()
    elif mod["type"] == "staterror":
        if term.own_staterror:
            mod["name"] = f"staterror_{channel}_{term.name}"
            mod["data"] = np.sqrt(var).tolist()
        else:  # shared gamma: the combined relative width stays the SM's
            mod["data"] = list(shared_width)
    return mod
