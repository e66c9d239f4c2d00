"""Training plots with mplhep: off-resonance data vs continuum MC before and after BDTc.

Functions return a ``matplotlib.figure.Figure`` (no pyplot state); saving is the caller's.
"""

from __future__ import annotations

import mplhep
import numpy as np
from matplotlib.figure import Figure


def offres_comparison(
    variable: np.ndarray,
    is_data: np.ndarray,
    weight: np.ndarray,
    corrected: np.ndarray,
    edges: np.ndarray,
    label: str,
    chi2: tuple[float, float],
) -> Figure:
    """Off-resonance data (points) vs MC before (dashed) and after (solid) the BDTc weights.

    MC is normalised to the data in both cases (BDTc corrects the shape); the lower panel shows
    data/MC. ``chi2`` is (before, after) per degree of freedom, printed in the legend.
    """
    d = is_data == 1
    data, _ = np.histogram(variable[d], edges)
    before, _ = np.histogram(variable[~d], edges, weights=weight[~d])
    after, _ = np.histogram(variable[~d], edges, weights=corrected[~d])
    before = before * data.sum() / max(before.sum(), 1e-300)
    after = after * data.sum() / max(after.sum(), 1e-300)
    fig = Figure(figsize=(6, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    mplhep.histplot(before, edges, ax=top, ls="--", label=f"MC before (chi2/ndf {chi2[0]:.2f})")
    mplhep.histplot(after, edges, ax=top, label=f"MC after BDTc (chi2/ndf {chi2[1]:.2f})")
    mplhep.histplot(data, edges, ax=top, histtype="errorbar", color="k", label="off-res. data")
    top.set_ylabel("events")
    top.legend()
    centres = 0.5 * (edges[1:] + edges[:-1])
    for mc, style in ((before, "--"), (after, "-")):
        ratio = np.divide(data, mc, out=np.full(len(mc), np.nan), where=mc > 0)
        bottom.plot(centres, ratio, style, marker="o", ms=3)
    bottom.axhline(1.0, color="grey", lw=0.8)
    bottom.set_ylabel("data/MC")
    bottom.set_xlabel(label)
    return fig
