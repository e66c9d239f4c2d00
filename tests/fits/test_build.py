"""Histograms -> workspaces -> combination, on a constructed histogram file."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyhf
import pytest
import uproot

from knunu.errors import ConfigError, InputError
from knunu.fits.build import CHANNELS, HistogramFile, build_spec, combine
from knunu.fits.catalogue import Systematic, check_catalogue, load_catalogue
from knunu.fits.infer import Likelihood
from knunu.fits.workspace import load_workspace, published_workspace_path

from .histfile import write_histogram_file


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


@pytest.fixture(scope="module")
def asimov_file(tmp_path_factory, catalogue):
    path = tmp_path_factory.mktemp("hists") / "histograms.root"
    hists = write_histogram_file(path, catalogue, mu=3.0)
    return path, hists


@pytest.fixture(scope="module")
def specs(asimov_file, catalogue):
    hfile = HistogramFile(asimov_file[0])
    return {a: build_spec(hfile, a, catalogue) for a in ("ita", "hta")}


def test_catalogue_correlated_names_follow_the_published_likelihood(catalogue):
    published = set(load_workspace(published_workspace_path()).model().config.par_names)
    correlated = {r.name for r in catalogue if r.correlated}
    assert correlated <= published
    assert {
        "corr_ff_c1",
        "corr_DKL_c1",
        "corr_KLKL_c1",
        "corr_nnbar_c1",
        "corr_exoticD_c1",
    } <= correlated
    for row in catalogue:
        if row.correlated:
            assert set(row.samples) == {"ita", "hta"}


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        (
            (Systematic("a", "histosys", True, {"ita": ("signal",)}, variation="a"),),
            "correlated but not in both analyses",
        ),
        (
            (
                Systematic("a", "normsys", False, {"ita": ("signal",)}, size=0.1),
                Systematic("a", "histosys", False, {"hta": ("signal",)}, variation="a"),
            ),
            "used as both normsys and histosys",
        ),
        (
            (
                Systematic("a", "normsys", False, {"ita": ("signal", "charged")}, size=0.1),
                Systematic("a", "normsys", False, {"ita": ("charged",)}, size=0.2),
            ),
            "acts 2 times on ita sample 'charged'",
        ),
    ],
)
def test_catalogue_clashes_are_caught(rows, problem):
    with pytest.raises(ConfigError, match=problem):
        check_catalogue(rows, "cat.yaml")


def test_bad_catalogue_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "systematics:\n  - {name: x, type: histosys, correlated: false, "
        "samples: {ita: [signal]}, size: 0.1}\n"
    )
    with pytest.raises(
        ConfigError, match=r"s\.yaml: key 'systematics\.0\.variation': required key is missing"
    ):
        load_catalogue(f)


def test_published_layout(specs, asimov_file):
    _path, hists = asimov_file
    ws = pyhf.Workspace(combine(specs, load_catalogue()))
    model = ws.model()
    assert model.config.channel_nbins == {
        "ita_on_sr": 9,
        "ita_on_cr": 3,
        "ita_off_sr": 9,
        "ita_off_cr": 3,
        "hta_sr": 6,
    }
    # eta-major order: the SR's first three bins are the 0.94-0.96 row across q2rec
    sig = next(s for s in specs["ita"]["channels"][0]["samples"] if s["name"] == "signal")
    np.testing.assert_allclose(sig["data"], hists["ita_on_signal_nominal"][1:4].ravel())
    assert specs["ita"]["channels"][2]["name"] == "ita_off_sr"
    assert {s["name"] for s in specs["ita"]["channels"][2]["samples"]} == {
        "uubar",
        "ddbar",
        "ssbar",
        "ccbar",
        "taupair",
    }


def test_combination_shares_exactly_the_correlated_names(specs, catalogue):
    model = pyhf.Workspace(combine(specs, catalogue)).model()
    names = model.config.par_names
    assert len(names) == len(set(names))
    for row in catalogue:
        if row.correlated:
            assert row.name in names
            assert f"ita_{row.name}" not in names
        else:
            for analysis in row.samples:
                assert f"{analysis}_{row.name}" in names
            assert row.name not in names
    assert names.count("mu") == 1


def test_offresonance_shares_the_continuum_normalisation(specs, catalogue):
    ws = pyhf.Workspace(combine(specs, catalogue))
    model = ws.model()
    x = np.asarray(model.config.suggested_init(), float)
    base = model.expected_actualdata(x)
    x[model.config.par_slice("ita_mu_bkg_ccbar")] = 1.0
    moved = model.expected_actualdata(x) != base
    nbins = model.config.channel_nbins
    edges = np.cumsum([0, *nbins.values()])
    per_channel = {
        c: moved[a:b].any() for c, a, b in zip(nbins, edges[:-1], edges[1:], strict=True)
    }
    assert per_channel == {
        "ita_on_sr": True,
        "ita_on_cr": True,
        "ita_off_sr": True,
        "ita_off_cr": True,
        "hta_sr": False,
    }


def test_asimov_fit_returns_injected_mu(specs, catalogue):
    for spec in (specs["ita"], specs["hta"], combine(specs, catalogue)):
        lh = Likelihood.from_workspace(pyhf.Workspace(spec))
        best = lh.fit()
        assert best.x[lh.poi] == pytest.approx(3.0, abs=1e-5)


def test_pruning_is_logged(asimov_file, catalogue, caplog):
    hfile = HistogramFile(asimov_file[0])
    with caplog.at_level(logging.INFO, logger="knunu.fits.build"):
        spec = build_spec(hfile, "hta", catalogue, prune_threshold=0.6)
    types = {m["type"] for c in spec["channels"] for s in c["samples"] for m in s["modifiers"]}
    assert types == {"normfactor", "staterror"}
    assert any("pruned corr_ff_c1 on hta_sr/signal" in r.getMessage() for r in caplog.records)


def test_missing_histogram_is_named(tmp_path, catalogue):
    path = tmp_path / "h.root"
    with uproot.recreate(path) as f:
        f["ita_on_signal_nominal"] = (np.ones((4, 3)), (np.arange(5.0), np.arange(4.0)))
    with pytest.raises(InputError, match=r"h\.root: histogram 'ita_on_signal_ff_c1_up' is missing"):
        build_spec(HistogramFile(path), "ita", catalogue)
    with pytest.raises(InputError, match=r"nope\.root: file not found"):
        HistogramFile(tmp_path / "nope.root")


def test_channels_table_covers_both_analyses():
    assert {c.analysis for c in CHANNELS.values()} == {"ita", "hta"}


def test_data_where_no_sample_expects_any_merge_into_the_bin_before(caplog, tmp_path):
    """A thin simulation: an event observed in an MC-empty bin is kept, in a coarser bin."""
    from knunu.errors import WorkspaceError
    from knunu.fits.build import drop_empty_bins

    def samples():
        return [
            {
                "name": "bkg",
                "data": [4.0, 0.0, 2.0, 0.0, 0.0],
                "modifiers": [
                    {"name": "s", "type": "staterror", "data": [3.0, 0.0, 1.0, 0.0, 0.0]},
                    {
                        "name": "h",
                        "type": "histosys",
                        "data": {"hi_data": [5.0, 0, 3.0, 0, 0], "lo_data": [3.0, 0, 1.0, 0, 0]},
                    },
                    {"name": "n", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}},
                ],
            },
            {"name": "empty", "data": [0.0] * 5, "modifiers": []},
        ]

    observed = np.array([1.0, 2.0, 3.0, 0.0, 1.0])  # bins 1 and 4: data, no expectation
    with pytest.raises(WorkspaceError, match="channel c bin 1: 2 events observed where no"):
        drop_empty_bins("c", samples(), observed, tmp_path / "h.root")
    with caplog.at_level(logging.WARNING):
        out, data, idx, members = drop_empty_bins(
            "c", samples(), observed, tmp_path / "h.root", True
        )
    assert idx.tolist() == [0, 2]
    assert members == [[0, 1], [2, 4]]  # bin 3: nothing observed, nothing expected
    assert data == [3.0, 4.0]  # every observed event kept: bin 1 -> 0, bins 3 (empty), 4 -> 2
    assert sum(data) == observed.sum()
    (bkg,) = out  # the sample empty everywhere is dropped
    assert bkg["data"] == [4.0, 2.0]
    stat, hsys, norm = bkg["modifiers"]
    assert stat["data"] == [3.0, 1.0]
    assert hsys["data"] == {"hi_data": [5.0, 3.0], "lo_data": [3.0, 1.0]}
    assert norm["data"] == {"hi": 1.1, "lo": 0.9}
    assert "bins [1, 4] merged into the bin before them (3 events observed" in caplog.text
    assert "bins [3] dropped (empty)" in caplog.text
    # a merged bin sums what it takes in, MC errors in quadrature (negative weights can leave
    # a bin's total at or below 0 with an error)
    two = samples()
    two[0]["data"][1] = -0.5
    two[0]["modifiers"][0]["data"][1] = 4.0
    out, data, _, _ = drop_empty_bins("c", two, observed, tmp_path / "h.root", True)
    assert data == [3.0, 4.0]
    assert out[0]["data"] == [3.5, 2.0]
    assert out[0]["modifiers"][0]["data"] == [5.0, 1.0]


def test_the_workspaces_say_what_each_bin_holds(tmp_path, asimov_file, catalogue):
    """bins.json: eta slice and q2rec (or eta(BDTh)) range of every kept bin, for the plots."""
    from knunu.fits.build import BINS_FILE, load_bins, write_workspaces

    paths = write_workspaces(asimov_file[0], tmp_path / "ws", catalogue)
    bins = load_bins(paths["combined"])
    assert bins == json.loads((tmp_path / "ws" / BINS_FILE).read_text())
    spec = json.loads(paths["combined"].read_text())
    for channel in spec["channels"]:  # one description per bin of the workspace
        assert len(bins[channel["name"]]["bins"]) == len(channel["samples"][0]["data"])
    sr = bins["ita_on_sr"]
    assert sr["axis"] == "q2rec [GeV^2]"
    assert sr["bins"][0] == {"group": "eta(BDT2) [0.94, 0.96]", "label": "[-1, 4]"}
    assert sr["bins"][-1] == {"group": "eta(BDT2) [0.98, 1.00]", "label": "[8, 25]"}
    assert {b["group"] for b in bins["ita_on_cr"]["bins"]} == {"eta(BDT2) [0.92, 0.94]"}
    assert bins["hta_sr"]["axis"] == "eta(BDTh)"
    assert load_bins(tmp_path / "elsewhere" / "ws.json") == {}  # e.g. the published workspace


def test_a_channel_with_events_and_no_mc_is_left_out_and_counted(tmp_path, catalogue):
    """A thin simulation: an off-resonance event where no MC reached the whole channel.

    No bin merge can keep it; the run's workspace is built without that channel (before
    stop 38 it could not be built and the fit stage fitted the published likelihood), and
    the bins file counts the events left out, for the fit stage's line.
    """
    from knunu.fits.build import BINS_FILE, left_out, load_bins, write_workspaces

    from . import histfile

    path = tmp_path / "histograms.root"
    histfile.write_histogram_file(path, catalogue, seed=5)
    with uproot.update(path) as f:
        for sample in histfile.ITA_OFFRES_SAMPLES:
            for key in [k.split(";")[0] for k in f.keys(cycle=True)]:
                if key.startswith(f"ita_off_{sample}_"):
                    f[key] = f[key].to_hist() * 0.0  # no MC off resonance at all
        data = f["ita_off_data_nominal"].to_hist()
        counts = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        data.view().value, data.view().variance = counts, counts
        f["ita_off_data_nominal"] = data
    # eta 0.92-0.94 is the control region, eta 0.94-1 the signal region
    cr_events, sr_events = 1.0, 3.0
    paths = write_workspaces(path, tmp_path / "ws", catalogue)
    spec = json.loads(paths["combined"].read_text())
    names = {c["name"] for c in spec["channels"]}
    assert {"ita_on_sr", "ita_on_cr", "hta_sr"} <= names
    assert not names & {"ita_off_sr", "ita_off_cr"}
    bins = load_bins(paths["combined"])
    assert bins == json.loads((tmp_path / "ws" / BINS_FILE).read_text())
    assert left_out(bins) == {"ita_off_cr": cr_events, "ita_off_sr": sr_events}
    Likelihood.from_workspace(pyhf.Workspace(spec))  # and it is a model
