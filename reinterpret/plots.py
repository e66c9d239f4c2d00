"""Reinterpretation plots: profiles, contours, mass-scan limits, map comparison.

Every function returns a ``matplotlib.figure.Figure``; saving is :func:`knunu.rundir.save_figure`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from knunu.reinterpret.maps import Q2_CENTRES, MapComparison
from knunu.reinterpret.scan import LEVELS_1D, LEVELS_2D, PUBLISHED_WET, WetResult, XResult

LABELS = {"wet_V": "|C_VL + C_VR|", "wet_S": "|C_SL + C_SR|", "wet_T": "|C_TL|"}
#: The published posterior modes (arXiv:2507.12393), for reference on the plots.
PUBLISHED_MODE = {name: mode for name, (mode, _) in PUBLISHED_WET.items()}


def profiles(result: WetResult) -> Figure:
    """1D profile of each coupling (2 Delta NLL), with the 68 / 95 % thresholds."""
    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, len(result.profiles), sharey=True)
    for ax, (name, (grid, q)) in zip(np.atleast_1d(axes), result.profiles.items(), strict=True):
        ax.plot(grid, q, color="k")
        for lvl, thr in LEVELS_1D.items():
            ax.axhline(thr, ls=":", color="grey")
            ax.text(grid[-1], thr, lvl, ha="right", va="bottom", fontsize=8)
        ax.axvline(PUBLISHED_MODE[name], color="tab:red", ls="--", label="published mode")
        ax.set_xlabel(LABELS[name])
        ax.set_ylim(0, 9)
    np.atleast_1d(axes)[0].set_ylabel("2 Delta NLL (profile)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"WET couplings, profile likelihood ({result.data})", fontsize=10)
    return fig


def contours(result: WetResult) -> Figure:
    """2D profiles: 68 / 95 % contours of each scanned pair."""
    pairs = list(result.contours.items())
    fig = Figure(figsize=(4.2 * max(len(pairs), 1), 4))
    axes = np.atleast_1d(fig.subplots(1, max(len(pairs), 1)))
    for ax, (key, (a, b, q)) in zip(axes, pairs, strict=False):
        na, nb = key.split(":")
        ax.contourf(a, b, q.T, levels=[0, *LEVELS_2D.values()], colors=["#3b75af", "#a6c8e8"])
        ax.contour(a, b, q.T, levels=list(LEVELS_2D.values()), colors="k", linewidths=0.8)
        ax.plot(result.best[na], result.best[nb], "k+", label="best fit")
        ax.plot(PUBLISHED_MODE[na], PUBLISHED_MODE[nb], "rx", label="published mode")
        ax.set_xlabel(LABELS[na])
        ax.set_ylabel(LABELS[nb])
    axes[0].legend(fontsize=8)
    fig.suptitle(f"68 / 95 % CL regions (profile likelihood, {result.data})", fontsize=10)
    return fig


def mass_scan(result: XResult) -> Figure:
    """Upper limits on B(B+ -> K+ X) versus m_X, and the local significance."""
    fig = Figure(figsize=(7, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    top.plot(result.masses, result.observed, color="k", label="observed")
    if np.any(np.isfinite(result.expected)):
        top.plot(result.masses, result.expected, color="k", ls="--", label="expected (median)")
    top.set_yscale("log")
    top.set_ylabel(f"B(B+ -> K+ X) upper limit, {result.level:.0%} CLs")
    top.legend(fontsize=8)
    bottom.plot(result.masses, result.local_z, color="tab:blue")
    bottom.set_ylabel("local Z")
    bottom.set_xlabel("m_X [GeV]")
    fig.suptitle(f"B+ -> K+ X, X invisible and narrow ({result.data})", fontsize=10)
    return fig


def map_comparison(comparisons: dict[str, MapComparison]) -> Figure:
    """The run's maps against the published: q2gen shapes and per-bin ratios."""
    fig = Figure(figsize=(12, 7))
    axes = fig.subplots(2, len(comparisons))
    axes = np.atleast_2d(axes).reshape(2, -1)
    centres = Q2_CENTRES
    for k, (region, cmp) in enumerate(comparisons.items()):
        ax = axes[0, k]
        ax.step(centres[1:], cmp.q2_published[1:], where="mid", label="published (Belle II MC)")
        ax.step(centres[1:], cmp.q2_ours[1:], where="mid", label="this run")
        ax.set_xlabel("q2gen [GeV^2]")
        ax.set_title(region, fontsize=9)
        ax = axes[1, k]
        ax.plot(np.arange(len(cmp.row_ratio)), cmp.row_ratio, "o")
        ax.axhline(1.0, color="grey", ls=":")
        ax.set_xlabel("reconstructed bin")
        ax.set_ylabel("fraction: run / published")
    axes[0, 0].set_ylabel("fraction of the region's signal")
    axes[0, 0].legend(fontsize=8)
    return fig
