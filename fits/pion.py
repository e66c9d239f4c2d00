"""Validations with the pion-candidate ITA sample (``pion_*`` histograms of the processing stage).

- :func:`sideband_fit`: the pion-enriched sideband (below the signal region in eta(BDT2)):
  a 3-component fit of data in eta x q2rec(pi): B Bbar events with a K_L from a D decay (free),
  other B Bbar events (constrained, :data:`SIDEBAND_OTHER_BBBAR`) and continuum with tau pairs
  (free). The MC carries every nominal correction but the D -> K_L rate, so the first
  normalisation *is* the B(D -> K_L X) scale (the paper finds +30 %).
- :func:`closure`: B+ -> pi+ K0 with the ITA machinery in the signal region: data fitted with the
  pi+ K0 template (its MC scaled to its generated branching fraction) over the corrected
  backgrounds with their normalisation uncertainties; the fitted branching fraction against the
  generated one, and the uncertainty expected at the measurement's luminosity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyhf
import uproot

from knunu import samples
from knunu.errors import FitError, InputError
from knunu.fits.build import drop_empty_bins
from knunu.fits.infer import Likelihood

#: The on-resonance MC of the pion sample by component (``pion_{sample}_{truth}_nominal``).
BBBAR = (*samples.BBBAR, samples.SIGNAL, "pi_k0")
CONTINUUM = samples.OFFRES  # the quark pairs and tau pairs
TRUTHS = ("dkl", "other")
#: The sideband's B Bbar events without a D -> K_L: their rate is known (N_BB, the leading
#: branching fractions) to this relative uncertainty (a Gaussian constraint); the D -> K_L
#: scale and the continuum normalisation float freely. With all three free, the D -> K_L and
#: other B Bbar q2rec shapes are too alike for the fit to tell them apart.
SIDEBAND_OTHER_BBBAR = 0.1
#: Normalisation uncertainties of the closure's backgrounds (as the ITA's: 50 %).
CLOSURE_NORMS = {"bbbar": 0.5, "continuum": 0.5}


class Region(NamedTuple):
    """The pion histograms in an eta(BDT2) range, flattened (eta x q2rec)."""

    mc: dict[str, tuple[np.ndarray, np.ndarray]]  # "{sample}_{truth}": (values, variances)
    data: np.ndarray
    shape: tuple[int, int]  # (eta bins, q2rec bins)
    q2rec_edges: np.ndarray


def read_region(histograms: Path, eta: Sequence[float], channel: str = "pion") -> Region:
    """The pion histograms of ``histograms`` in the eta(BDT2) range ``eta``.

    ``channel``: ``pion`` (every event) or ``pion_lepton`` (events with an identified lepton).

    Raises:
        InputError: the file has no pion histograms (a run without ``ita.pion``).
    """
    lo, hi = eta
    with uproot.open(histograms) as f:
        keys = {k.split(";")[0] for k in f.keys(cycle=True)}
        if f"{channel}_data_nominal" not in keys:
            raise InputError(f"{histograms}: no pion-candidate histograms ({channel}_data_nominal)")

        first = f[f"{channel}_data_nominal"].to_hist()
        edges = first.axes[0].edges  # eta (ROOT keeps no axis names)
        rows = (edges[:-1] >= lo - 1e-9) & (edges[1:] <= hi + 1e-9)
        if not rows.any():
            raise InputError(f"{histograms}: no eta(BDT2) bins in [{lo}, {hi}]")

        def region(key: str) -> tuple[np.ndarray, np.ndarray]:
            h = f[key].to_hist()
            return h.values()[rows].ravel(), h.variances()[rows].ravel()

        mc = {
            f"{s}_{t}": region(f"{channel}_{s}_{t}_nominal")
            for s in (*BBBAR, *CONTINUUM)
            for t in TRUTHS
            if f"{channel}_{s}_{t}_nominal" in keys
        }
        data = region(f"{channel}_data_nominal")[0]
    shape = (int(rows.sum()), len(first.axes[1]))
    return Region(mc, data, shape, first.axes[1].edges)


def _sum(
    mc: Mapping[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    have = [mc[n] for n in names if n in mc]
    if not have:
        raise InputError(f"pion histograms: none of {', '.join(names)}")
    return sum(v for v, _ in have), sum(e for _, e in have)


def _sample(
    name: str, values: np.ndarray, variances: np.ndarray, modifiers: list[dict[str, Any]]
) -> dict[str, Any]:
    error = np.sqrt(np.clip(variances, 0.0, None))
    return {
        "name": name,
        "data": values.tolist(),
        "modifiers": [
            *modifiers,
            {"name": f"staterror_{name}", "type": "staterror", "data": error.tolist()},
        ],
    }


def _spec(
    path: Path, channel: str, samples: list[dict[str, Any]], data: np.ndarray, poi: str
) -> tuple[dict[str, Any], np.ndarray]:
    """The spec of one channel on the bins with an expectation, and those bins' indices.

    Raises:
        WorkspaceError: data in a bin no sample populates.
        FitError: the sample that carries ``poi`` is empty in the region.
    """
    kept = drop_empty_bins(channel, samples, data, path)
    with_poi = kept is not None and any(m["name"] == poi for s in kept[0] for m in s["modifiers"])
    if not with_poi:
        raise FitError(f"{path}: {channel}: the sample that {poi} scales is empty in the region")
    samples, observed, bins = kept.samples, kept.observed, kept.bins
    spec = {
        "channels": [{"name": channel, "samples": samples}],
        "observations": [{"name": channel, "data": observed}],
        "measurements": [{"name": channel, "config": {"poi": poi, "parameters": []}}],
        "version": "1.0.0",
    }
    return spec, bins


class PostFit(NamedTuple):
    """Data and fitted components in q2rec(pi), summed over the region's eta bins (plots)."""

    q2rec_edges: list[float]
    data: list[float]
    components: dict[str, list[float]]


def _fit(
    spec: dict[str, Any], bins: np.ndarray, region: Region
) -> tuple[Likelihood, Any, Any, PostFit]:
    lh = Likelihood.from_workspace(pyhf.Workspace(spec))
    best = lh.fit()
    unc = lh.uncertainties(best)
    by_sample = np.asarray(lh.model.main_model.expected_data(best.x, return_by_sample=True))
    names = lh.model.config.samples
    components = {}
    for name, row in zip(names, by_sample, strict=True):
        full = np.zeros(region.data.size)
        full[bins] = row
        components[name] = full.reshape(region.shape).sum(axis=0).tolist()
    post = PostFit(
        region.q2rec_edges.tolist(),
        region.data.reshape(region.shape).sum(axis=0).tolist(),
        components,
    )
    return lh, best, unc, post


def _require_error(error: float, what: str) -> None:
    """Refuse a POI without a positive, finite Hesse error.

    No curvature, or a Hessian that is not positive definite (too few events): the result
    cannot be quoted.
    """
    if not np.isfinite(error) or error <= 0:
        raise FitError(f"{what} has no valid Hesse error for its parameter (too few events)")


class SidebandFit(NamedTuple):
    """The 3-component fit of the pion-enriched sideband."""

    d_to_kl_scale: float
    d_to_kl_error: float
    bbbar_other: float
    bbbar_other_error: float
    continuum: float
    continuum_error: float
    correlation: float  # between the D -> K_L scale and the other B Bbar normalisation
    data_events: float
    bins: int
    eta: tuple[float, float]
    channel: str  # ``pion`` (every event) or ``pion_lepton`` (lepton-enriched)
    projected_error: float  # the D -> K_L scale's (Asimov) at ``projected_luminosity_fb``
    projected_luminosity_fb: float
    postfit: PostFit


def sideband_spec(
    histograms: Path, eta: Sequence[float], channel: str = "pion"
) -> tuple[dict, np.ndarray, Region]:
    """The pyhf specification of the sideband fit (POI: the D -> K_L scale)."""
    region = read_region(histograms, eta, channel)
    mc = region.mc
    parts = {
        "bbbar_dkl": _sum(mc, [f"{s}_dkl" for s in BBBAR]),
        "bbbar_other": _sum(mc, [f"{s}_other" for s in BBBAR]),
        "continuum": _sum(mc, [f"{s}_{t}" for s in CONTINUUM for t in TRUTHS]),
    }
    size = SIDEBAND_OTHER_BBBAR
    norm = {
        "bbbar_dkl": {"name": "d_to_kl_scale", "type": "normfactor", "data": None},
        "bbbar_other": {
            "name": "bbbar_other", "type": "normsys", "data": {"hi": 1 + size, "lo": 1 - size}
        },
        "continuum": {"name": "continuum", "type": "normfactor", "data": None},
    }  # fmt: skip
    samples = [_sample(name, v, e, [norm[name]]) for name, (v, e) in parts.items()]
    spec, bins = _spec(histograms, "pion_sideband", samples, region.data, "d_to_kl_scale")
    spec["measurements"][0]["config"]["parameters"] = [
        {"name": p, "bounds": [[0.0, 5.0]], "inits": [1.0]} for p in ("d_to_kl_scale", "continuum")
    ]
    return spec, bins, region


def sideband_fit(
    histograms: Path,
    eta: Sequence[float],
    luminosity_fb: float,
    projected_luminosity_fb: float,
    channel: str = "pion",
) -> SidebandFit:
    """Fit the sideband (data in ``eta``, every q2rec bin); the three normalisations.

    Raises:
        WorkspaceError: data in a bin where no template expects any.
        FitError: the fit did not converge, or has no valid error on the D -> K_L scale.
    """
    from knunu.fits.validation import asimov_sigma, scaled_spec

    spec, bins, region = sideband_spec(histograms, eta, channel)
    lh, best, unc, post = _fit(spec, bins, region)
    _require_error(unc.error[lh.poi], f"{histograms}: the {channel} sideband fit")
    big = scaled_spec(spec, projected_luminosity_fb / luminosity_fb)
    scale = float(best.x[lh.poi])
    projected = asimov_sigma(Likelihood.from_workspace(pyhf.Workspace(big)), scale)
    idx = {name: lh.labels.index(name) for name in ("d_to_kl_scale", "bbbar_other", "continuum")}
    corr = unc.correlation[idx["d_to_kl_scale"], idx["bbbar_other"]]
    data = spec["observations"][0]["data"]
    # the other B Bbar's factor from its pull alpha (exponential interpolation of a normsys)
    alpha, alpha_err = float(best.x[idx["bbbar_other"]]), float(unc.error[idx["bbbar_other"]])
    other = (1 + SIDEBAND_OTHER_BBBAR) ** alpha
    return SidebandFit(
        float(best.x[idx["d_to_kl_scale"]]),
        float(unc.error[idx["d_to_kl_scale"]]),
        other,
        other * np.log1p(SIDEBAND_OTHER_BBBAR) * alpha_err,
        float(best.x[idx["continuum"]]),
        float(unc.error[idx["continuum"]]),
        float(corr),
        float(np.sum(data)),
        len(data),
        (float(eta[0]), float(eta[1])),
        channel,
        projected,
        projected_luminosity_fb,
        post,
    )


class Closure(NamedTuple):
    """B+ -> pi+ K0 measured with the ITA machinery."""

    bf: float
    bf_error: float
    bf_generated: float
    expected_error: float  # Asimov at the generated BF, this run's luminosity
    projected_error: float  # the same with the templates at ``projected_luminosity_fb``
    projected_luminosity_fb: float
    signal_expected: float  # pi+ K0 events expected in the region at the generated BF
    data_events: float
    at_bound: bool
    postfit: PostFit


def closure_spec(
    histograms: Path, eta: Sequence[float], d_to_kl_scale: float
) -> tuple[dict, np.ndarray, Region]:
    """The pyhf specification of the closure (POI ``mu_pik0``: BF over the generated one)."""
    region = read_region(histograms, eta)
    mc = region.mc
    sig = _sum(mc, [f"pi_k0_{t}" for t in TRUTHS])
    dkl, other = (_sum(mc, [f"{s}_{t}" for s in BBBAR if s != "pi_k0"]) for t in TRUTHS)
    bbbar = (d_to_kl_scale * dkl[0] + other[0], d_to_kl_scale**2 * dkl[1] + other[1])
    cont = _sum(mc, [f"{s}_{t}" for s in CONTINUUM for t in TRUTHS])

    def norm(name: str) -> dict[str, Any]:
        size = CLOSURE_NORMS[name]
        return {"name": f"{name}_norm", "type": "normsys", "data": {"hi": 1 + size, "lo": 1 - size}}

    samples = [
        _sample("pi_k0", *sig, [{"name": "mu_pik0", "type": "normfactor", "data": None}]),
        _sample("bbbar", *bbbar, [norm("bbbar")]),
        _sample("continuum", *cont, [norm("continuum")]),
    ]
    spec, bins = _spec(histograms, "pion_closure", samples, region.data, "mu_pik0")
    spec["measurements"][0]["config"]["parameters"] = [
        {"name": "mu_pik0", "bounds": [list(CLOSURE_BOUNDS)], "inits": [1.0]}
    ]
    return spec, bins, region


#: Range of the closure's mu_pik0 (BF over the generated one).
CLOSURE_BOUNDS = (0.0, 50.0)


def closure(
    histograms: Path,
    eta: Sequence[float],
    d_to_kl_scale: float,
    bf_generated: float,
    luminosity_fb: float,
    projected_luminosity_fb: float,
) -> Closure:
    """Fit the B+ -> pi+ K0 branching fraction in the pion signal region.

    Raises:
        WorkspaceError: data in a bin where no template expects any.
        FitError: no pi+ K0 template in the region, the fit did not converge, or it has no
            valid error on the branching fraction.
    """
    from knunu.fits.validation import asimov_sigma, scaled_spec

    spec, bins, region = closure_spec(histograms, eta, d_to_kl_scale)
    lh, best, unc, post = _fit(spec, bins, region)
    mu, err = float(best.x[lh.poi]), float(unc.error[lh.poi])
    _require_error(err, f"{histograms}: the pi+ K0 closure fit")
    expected = asimov_sigma(lh, 1.0)
    big = scaled_spec(spec, projected_luminosity_fb / luminosity_fb)
    projected = asimov_sigma(Likelihood.from_workspace(pyhf.Workspace(big)), 1.0)
    return Closure(
        mu * bf_generated,
        err * bf_generated,
        bf_generated,
        expected * bf_generated,
        projected * bf_generated,
        projected_luminosity_fb,
        float(np.sum(spec["channels"][0]["samples"][0]["data"])),
        float(np.sum(spec["observations"][0]["data"])),
        bool(np.isclose(mu, CLOSURE_BOUNDS).any()),
        post,
    )
