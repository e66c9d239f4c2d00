"""The fit plots: bins labelled by what they hold, data with Poisson intervals, a model band."""

from __future__ import annotations

import numpy as np
import pyhf

from knunu.fits.infer import Likelihood
from knunu.fits.plots import stacked


def _likelihood() -> Likelihood:
    model = pyhf.simplemodels.uncorrelated_background([5.0, 10.0, 2.0], [50.0, 60.0, 3.0],
                                                      [5.0, 12.0, 1.0])  # fmt: skip
    spec = {
        "channels": model.spec["channels"],
        "observations": [{"name": "singlechannel", "data": [62.0, 66.0, 0.0]}],
        "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}],
        "version": "1.0.0",
    }
    return Likelihood.from_workspace(pyhf.Workspace(spec))


BINS = {
    "axis": "q2rec [GeV^2]",
    "bins": [
        {"group": "eta(BDT2) [0.94, 0.96]", "label": "[-1, 4]"},
        {"group": "eta(BDT2) [0.94, 0.96]", "label": "[4, 25]"},
        {"group": "eta(BDT2) [0.96, 1.00]", "label": "[-1, 4] + [4, 25]"},  # a merged bin
    ],
}


def test_bins_are_labelled_and_eta_slices_named():
    lh = _likelihood()
    fig = stacked(lh, lh.init, "singlechannel", bins=BINS)
    ax, rax = fig.axes
    assert [t.get_text() for t in rax.get_xticklabels()] == [b["label"] for b in BINS["bins"]]
    assert "GeV$^2$" in rax.get_xlabel()
    slices = [t.get_text() for t in ax.texts]
    assert slices == [r"$\eta$(BDT2) [0.94, 0.96]", r"$\eta$(BDT2) [0.96, 1.00]"]
    boundaries = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":"]
    assert boundaries == [2]  # between the two slices, on both panels
    # data drawn with their Garwood interval: 0 observed still has an upper error (1.84)
    (data,) = [c for c in ax.containers if c.get_label() == "data"]
    segments = data.lines[2][0].get_segments()
    assert np.isclose(segments[2][1][1], 1.8410, atol=1e-3)
    assert "model uncertainty" not in [t.get_text() for t in ax.get_legend().get_texts()]


def test_the_band_is_the_linearly_propagated_covariance():
    lh = _likelihood()
    cov = np.diag(np.nan_to_num(lh.prior_width) ** 2)
    fig = stacked(lh, lh.init, "singlechannel", covariance=cov)
    ax, _ = fig.axes
    (band,) = [p for p in ax.patches if p.get_label() == "model uncertainty"]
    # one gamma per bin, width unc/bkg, scaling only the background: band = unc (mu not varied)
    edges_y = sorted(set(np.round(band.get_path().vertices[:, 1], 6)))
    for total, unc in ((55.0, 5.0), (70.0, 12.0), (5.0, 1.0)):
        assert round(total + unc, 6) in edges_y
        assert round(total - unc, 6) in edges_y


def test_without_a_description_of_these_bins_they_are_numbered():
    lh = _likelihood()
    short = {**BINS, "bins": BINS["bins"][:2]}  # another workspace's bins: not used
    for bins in (None, short):
        fig = stacked(lh, lh.init, "singlechannel", bins=bins)
        _, rax = fig.axes
        assert [t.get_text() for t in rax.get_xticklabels()] == ["0", "1", "2"]
        assert rax.get_xlabel() == "bin"
