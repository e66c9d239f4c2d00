"""Fit plots with mplhep: stacked pre/post-fit distributions, pulls, impacts, correlations.

Every function returns a ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend);
saving is the caller's business (:func:`save`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import mplhep
import numpy as np
from hist.intervals import poisson_interval
from matplotlib.figure import Figure

from knunu.fits.infer import GoodnessOfFit, Impact, Likelihood, Uncertainties

mpl.rcParams["figure.max_open_warning"] = 0


def channel_yields(lh: Likelihood, x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Expected yields per channel and sample at parameters ``x``."""
    cfg = lh.model.config
    by_sample = np.asarray(lh.model.main_model.expected_data(x, return_by_sample=True))
    out: dict[str, dict[str, np.ndarray]] = {}
    for channel in cfg.channels:
        sl = cfg.channel_slices[channel]
        out[channel] = {s: by_sample[i][sl] for i, s in enumerate(cfg.samples)}
    return out


def stacked(
    lh: Likelihood,
    x: np.ndarray,
    channel: str,
    title: str = "",
    *,
    covariance: np.ndarray | None = None,
    bins: dict[str, Any] | None = None,
) -> Figure:
    """Stacked expected yields of one channel with the observed data and a data/model panel.

    Args:
        lh: The likelihood (model and data).
        x: The parameters the yields are drawn at (pre- or post-fit).
        channel: The channel.
        title: The plot's title (default: the channel).
        covariance: The parameters' covariance; the model's uncertainty band propagates it
            linearly (none without it).
        bins: What the channel's bins hold (:func:`knunu.fits.build.channel_bins`): each bin is
            labelled with its range, and bins of one eta slice are grouped; numbered without.
    """
    cfg = lh.model.config
    sl = cfg.channel_slices[channel]
    yields = {s: y for s, y in channel_yields(lh, x)[channel].items() if np.any(y != 0)}
    data = np.asarray(lh.data[: lh.nmain][sl], dtype=float)
    nbins = len(data)
    edges = np.arange(nbins + 1, dtype=float)
    fig = Figure(figsize=(9.5, 6.5))
    ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.06})
    order = sorted(yields, key=lambda s: yields[s].sum())
    mplhep.histplot(
        [yields[s] for s in order], edges, ax=ax, stack=True, histtype="fill", label=order
    )
    total = np.sum([yields[s] for s in order], axis=0)
    band = _band(lh, x, sl, covariance) if covariance is not None else None
    if band is not None:
        ax.stairs(total + band, edges, baseline=total - band, fill=True, hatch="////",
                  facecolor="none", edgecolor="grey", lw=0, label="model uncertainty")  # fmt: skip
    low, high = poisson_interval(data)  # Garwood 68 % intervals
    low, high = np.nan_to_num(low), np.nan_to_num(high)
    centres = edges[:-1] + 0.5
    ax.errorbar(centres, data, yerr=[data - low, high - data], fmt="ko", ms=4, label="data")
    ax.set_ylabel("events / bin")
    top = total + (band if band is not None else 0.0)
    ax.set_ylim(0, 1.2 * max(float(np.max(high, initial=0)), float(np.max(top, initial=0)), 1e-9))
    ax.set_title(title or channel)
    _legend(ax, order)
    _ratio_panel(rax, edges, data, (low, high), total, band)
    _label_bins(ax, rax, bins, nbins)
    fig.align_ylabels([ax, rax])
    fig.subplots_adjust(left=0.1, right=0.78, bottom=0.16)
    return fig


def _legend(ax: Any, order: list[str]) -> None:
    """The legend beside the main panel: data, the band, then the stack from its top."""
    by_label = dict(zip(*ax.get_legend_handles_labels()[::-1], strict=True))
    shown = [k for k in ("data", "model uncertainty", *order[::-1]) if k in by_label]
    ax.legend([by_label[k] for k in shown], shown, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)  # fmt: skip


def _ratio_panel(
    rax: Any,
    edges: np.ndarray,
    data: np.ndarray,
    interval: tuple[np.ndarray, np.ndarray],
    total: np.ndarray,
    band: np.ndarray | None,
) -> None:
    """Data over the model with the data's 68 % interval and the model's band."""
    low, high = interval
    centres = edges[:-1] + 0.5
    scale = np.where(total > 0, total, np.nan)
    rax.errorbar(centres, data / scale, yerr=[(data - low) / scale, (high - data) / scale],
                 fmt="ko", ms=4)  # fmt: skip
    if band is not None:
        rax.stairs(1 + band / scale, edges, baseline=1 - band / scale, fill=True,
                   hatch="////", facecolor="none", edgecolor="grey", lw=0)  # fmt: skip
    rax.axhline(1.0, color="grey", ls="--")
    rax.set_ylabel("data / model")
    rax.set_ylim(0.4, 1.6)
    rax.set_xlim(0, len(data))


def _band(lh: Likelihood, x: np.ndarray, sl: slice, covariance: np.ndarray) -> np.ndarray:
    """The total yield's uncertainty per bin: J C J^T with J by central differences."""
    x = np.asarray(x, dtype=float)
    # a parameter without curvature (mu at its bound) has NaN (co)variances: it adds nothing
    covariance = np.nan_to_num(np.asarray(covariance, dtype=float))
    sigma = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    jac = np.zeros((sl.stop - sl.start, len(x)))
    for i in np.flatnonzero(sigma > 0):
        step = np.zeros_like(x)
        step[i] = 1e-3 * sigma[i]
        up = lh.expected_data(x + step)[: lh.nmain][sl]
        down = lh.expected_data(x - step)[: lh.nmain][sl]
        jac[:, i] = (up - down) / (2 * step[i])
    return np.sqrt(np.clip(np.einsum("bi,ij,bj->b", jac, covariance, jac), 0.0, None))


def _label_bins(ax: Any, rax: Any, bins: dict[str, Any] | None, nbins: int) -> None:
    """Tick labels from the bins' ranges, eta slices marked and named; bin numbers without."""
    described = (bins or {}).get("bins", [])
    if len(described) != nbins:  # no description, or one of other bins (not this workspace's)
        rax.set_xlabel("bin")
        rax.set_xticks(np.arange(nbins) + 0.5, [str(i) for i in range(nbins)])
        return
    rax.set_xticks(np.arange(nbins) + 0.5, [b["label"] for b in described], rotation=30,
                   ha="right", fontsize="small")  # fmt: skip
    rax.set_xlabel(
        bins["axis"]
        .replace("eta", r"$\eta$")
        .replace("q2rec", r"$q^2_{rec}$")
        .replace("^2]", "$^2$]")
    )
    start = 0
    for i in range(1, nbins + 1):
        if i < nbins and described[i]["group"] == described[start]["group"]:
            continue
        group = described[start]["group"].replace("eta", r"$\eta$")
        if group:
            ax.text((start + i) / 2, 0.97, group, transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize="small")  # fmt: skip
        if i < nbins:
            for a in (ax, rax):
                a.axvline(i, color="k", ls=":", lw=0.8)
        start = i


def pulls(lh: Likelihood, x: np.ndarray, unc: Uncertainties, max_rows: int = 60) -> Figure:
    """Pulls (theta_hat - theta_0) / prior width of the constrained nuisance parameters.

    Post-fit errors are drawn in the same units; the largest |pull| comes first.
    """
    init = lh.init
    width = lh.prior_width
    idx = [i for i in range(lh.npars) if i != lh.poi and np.isfinite(width[i])]
    pull = np.array([(x[i] - init[i]) / width[i] for i in idx])
    err = np.array([unc.error[i] / width[i] for i in idx])
    order = np.argsort(-np.abs(pull))[:max_rows][::-1]
    fig = Figure(figsize=(7, 0.2 * len(order) + 1.5))
    ax = fig.subplots()
    ypos = np.arange(len(order))
    ax.axvspan(-1, 1, color="yellow", alpha=0.3)
    ax.axvline(0, color="grey", ls="--")
    ax.errorbar(pull[order], ypos, xerr=err[order], fmt="ko", ms=3)
    ax.set_yticks(ypos, [lh.labels[idx[k]] for k in order], fontsize=6)
    ax.set_xlabel(r"$(\hat\theta - \theta_0) / \Delta\theta$")
    ax.set_xlim(-3, 3)
    fig.tight_layout()
    return fig


def impact_ranking(ranked: Sequence[Impact], top: int = 20) -> Figure:
    """Horizontal bars of the largest post-fit impacts on the POI."""
    shown = list(ranked[:top])[::-1]
    fig = Figure(figsize=(7, 0.3 * len(shown) + 1.5))
    ax = fig.subplots()
    ypos = np.arange(len(shown))
    ax.barh(ypos, [i.up for i in shown], color="tab:red", alpha=0.6, label=r"$+1\sigma$")
    ax.barh(ypos, [i.down for i in shown], color="tab:blue", alpha=0.6, label=r"$-1\sigma$")
    ax.set_yticks(ypos, [i.name for i in shown], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(r"$\Delta\mu$")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def correlation(lh: Likelihood, unc: Uncertainties, top: int = 25) -> Figure:
    """Correlation matrix of the POI and the parameters most correlated with it."""
    corr = unc.correlation
    poi = lh.poi
    ranked = np.argsort(-np.abs(corr[poi]))
    keep = [poi, *[i for i in ranked if i != poi and unc.error[i] > 0][: top - 1]]
    sub = corr[np.ix_(keep, keep)]
    fig = Figure(figsize=(8, 7))
    ax = fig.subplots()
    image = ax.imshow(sub, cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [lh.labels[i] for i in keep]
    ax.set_xticks(range(len(keep)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(keep)), labels, fontsize=6)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def gof_toys(gof: GoodnessOfFit) -> Figure:
    """The saturated-model deviance of the toys with the observed value and the p-value."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.hist(gof.toy_deviances, bins=40, histtype="step", color="k", label="pseudo-experiments")
    ax.axvline(gof.deviance, color="tab:red", label=f"observed (p = {gof.p_value:.2f})")
    ax.set_xlabel("saturated-model deviance")
    ax.set_ylabel("toys")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def injection(inj: Any) -> Figure:
    """Mean fitted mu against the injected mu_true, with the fitted line and the diagonal."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    x = np.asarray(inj.mu_true)
    ax.errorbar(x, inj.mean, yerr=inj.width, fmt="none", ecolor="lightgrey", label="toy spread")
    ax.errorbar(x, inj.mean, yerr=inj.error, fmt="ko", label="mean fitted mu")
    grid = np.linspace(x.min(), x.max(), 2)
    ax.plot(grid, grid, "k:", label="slope 1")
    ax.plot(
        grid,
        inj.slope * grid + inj.intercept,
        color="tab:red",
        label=f"fit: slope {inj.slope:.3f} +- {inj.slope_error:.3f}",
    )
    ax.set_xlabel(r"injected $\mu$")
    ax.set_ylabel(r"fitted $\hat\mu$")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def splits(pairs: Sequence[Any], labels: dict[str, str]) -> Figure:
    """Fitted mu of each half of the consistency splits."""
    rows = [h for p in pairs for h in p.halves]
    fig = Figure(figsize=(6, 0.5 * len(rows) + 1.5))
    ax = fig.subplots()
    ypos = np.arange(len(rows))[::-1]
    ax.errorbar([h.mu for h in rows], ypos, xerr=[h.error for h in rows], fmt="ko")
    ax.set_yticks(ypos, [labels.get(h.split, h.split) for h in rows])
    ax.set_xlabel(r"fitted $\mu$ (ITA, one half of the data)")
    fig.tight_layout()
    return fig


def postfit_q2rec(post: Any, title: str) -> Figure:
    """Data and the fitted components in q2rec (a :class:`knunu.fits.pion.PostFit`)."""
    edges = np.asarray(post.q2rec_edges)
    data = np.asarray(post.data)
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    order = sorted(post.components, key=lambda s: sum(post.components[s]))
    mplhep.histplot(
        [np.asarray(post.components[s]) for s in order],
        edges,
        ax=ax,
        stack=True,
        histtype="fill",
        label=order,
    )
    mplhep.histplot(
        data, edges, ax=ax, histtype="errorbar", yerr=np.sqrt(data), color="k", label="data"
    )
    ax.set_xlabel(r"$q^2_{rec}(\pi)$ [GeV$^2$]")
    ax.set_ylabel("events / bin")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def efficiency_q2(effs: Sequence[Any], published: dict[tuple[float, float], float]) -> Figure:
    """Signal-region efficiency versus q2gen per analysis, with the published ITA points."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for e in effs:
        edges = np.asarray(e.edges)
        centres = 0.5 * (edges[1:] + edges[:-1])
        ax.errorbar(
            centres,
            e.efficiency,
            xerr=0.5 * np.diff(edges),
            yerr=e.error,
            fmt="o",
            label=f"{e.analysis.upper()} (this run)",
        )
    ax.plot(
        [0.5 * (lo + hi) for lo, hi in published],
        list(published.values()),
        "k*",
        ms=10,
        label="ITA published",
    )
    ax.set_xlabel(r"$q^2_{gen}$ [GeV$^2$]")
    ax.set_ylabel("signal efficiency")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def control_distributions(histograms: str | Path) -> dict[str, Figure]:
    """BDT output distributions of every sample from the control histograms, with the data.

    ``ita_on_control_*`` (eta(BDT2) 0.75-1, projected over q2rec) and ``hta_control_*``
    (eta(BDTh) 0-1), MC stacked at its luminosity-scaled yields before the fit.
    """
    import uproot

    out = {}
    with uproot.open(histograms) as f:
        keys = {k.split(";")[0] for k in f.keys(cycle=True)}
        for name, prefix, label in (
            ("ita_eta_bdt2", "ita_on_control_", r"$\eta(BDT_2)$"),
            ("hta_eta_bdth", "hta_control_", r"$\eta(BDT_h)$"),
        ):
            found = sorted(k for k in keys if k.startswith(prefix) and k.endswith("_nominal"))
            if not found:
                continue
            stack, labels, data, edges = [], [], None, None
            for key in found:
                h = f[key]
                values = h.values()
                values = values.sum(axis=1) if values.ndim == 2 else values
                edges = h.axes[0].edges()
                sample = key[len(prefix) : -len("_nominal")]
                if sample == "data":
                    data = values
                else:
                    stack.append(values)
                    labels.append(sample)
            fig = Figure(figsize=(6.5, 4.5))
            ax = fig.subplots()
            if stack:
                mplhep.histplot(stack, edges, ax=ax, stack=True, histtype="fill", label=labels)
            if data is not None:
                mplhep.histplot(data, edges, ax=ax, histtype="errorbar", color="k", label="data")
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("events")
            ax.legend(fontsize="x-small", ncol=2)
            fig.tight_layout()
            out[name] = fig
    return out
