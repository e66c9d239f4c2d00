"""Physics of the simulated samples: who survives the ITA basic selection and a signal-like
region (against ../shared/notes/physics.md), and the emulated hadronic tag's efficiency."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from knunu.samples import load_samples
from knunu.simulation.detector import DetectorConfig, simulate_detector
from knunu.simulation.kinematics import ON_RESONANCE
from knunu.simulation.production import FileTask, produce_file, sample_cross_section_nb
from knunu.simulation.reconstruction import TagModel, hta_variables

LUMI = 362.0  # fb^-1
EVENTS = {"uubar": 30000, "ddbar": 8000, "ssbar": 8000, "ccbar": 25000, "taupair": 8000}
EVENTS |= {"charged": 30000, "mixed": 30000, "signal": 5000}


@pytest.fixture(scope="module")
def selected(libraries, tmp_path_factory):
    """Per sample: basic-selected events, their lowest-q2rec kaon, luminosity weights."""
    out = {}
    directory = tmp_path_factory.mktemp("composition")
    for k, (name, n) in enumerate(EVENTS.items()):
        task = FileTask(name, n, 900 + k, str(directory / f"{name}.root"), libraries=libraries)
        rec = produce_file(task)
        with uproot.open(task.path) as f:
            t = f["ita"].arrays()
        kaons = ak.zip({c[2:]: t[c] for c in t.fields if c.startswith("K_")})
        good = kaons[(kaons.kaonID > 0.9) & (kaons.dr < 0.5) & (abs(kaons.dz) < 3)]
        basic = (t.nTracks >= 4) & (t.nTracks <= 10) & (t.E_tot > 4)
        basic = basic & (t.theta_miss > 17) & (t.theta_miss < 160) & (ak.num(good) > 0)
        best = good[basic][ak.argmin(good[basic].q2rec, axis=1, keepdims=True)][:, 0]
        xs = sample_cross_section_nb(load_samples()[name]) * 1e6
        weight = np.asarray(t.__weight__[basic]) * xs * LUMI / rec.sum_weights
        out[name] = (t[basic], best, weight)
    return out


def _fractions(selected, cut=None):
    sums = {}
    for name, (t, best, w) in selected.items():
        keep = np.ones(len(t), bool) if cut is None else np.asarray(cut(t, best))
        sums[name] = w[keep].sum()
    total = sum(v for k, v in sums.items() if k != "signal")
    bb = (sums["charged"] + sums["mixed"]) / total
    continuum = sum(sums[k] for k in ("uubar", "ddbar", "ssbar", "ccbar")) / total
    return bb, continuum, sums


def test_continuum_dominates_after_the_basic_selection(selected):
    bb, continuum, sums = _fractions(selected)
    assert continuum > 0.6 > bb
    produced = {k: sample_cross_section_nb(load_samples()[k]) * 1e6 * LUMI for k in EVENTS}
    kept = sum(sums[k] for k in ("uubar", "ddbar", "ssbar", "ccbar"))
    all_continuum = sum(produced[k] for k in ("uubar", "ddbar", "ssbar", "ccbar"))
    assert 0.2 < kept / all_continuum < 0.5  # about 36 % in the notes


def test_signal_like_region_composition_is_within_a_factor_2_of_the_published(selected):
    """A cut-based region with about the SR's 8 % signal efficiency: BBbar ~2/3, qqbar ~1/3."""

    def region(t, k):
        return (t.R2 < 0.2) & (k.roe_mbc > 5.2) & (abs(k.roe_deltaE) < 0.4)

    bb, continuum, sums = _fractions(selected, region)
    efficiency = sums["signal"] / (1985 * 1.0)  # produced signal in 362 fb^-1 at mu = 1
    assert 0.04 < efficiency < 0.16
    assert 0.68 / 2 < bb <= 1.0
    assert 0.31 / 2 < continuum < 0.31 * 2


def test_hadronic_tag_efficiency_per_b(make_events):
    """The emulated FEI tags 0.3-0.5 % of B mesons correctly (notes)."""
    events = make_events("charged", 40000, 77)
    rng = np.random.default_rng(5)
    seen = simulate_detector(events.parts, ON_RESONANCE, DetectorConfig(), rng, events.total)
    model = TagModel(boost=50.0, max_signal_tracks=100)
    idx, weight, _, tags = hta_variables(events.parts, seen, model, rng)
    correct = tags["Btag_mcCorrect"] == 1
    per_b = np.sum(weight[correct] * events.truth["weight"][idx][correct]) / (2 * 40000)
    assert 0.003 < per_b < 0.005
    # a correct tag reconstructs a B: Mbc at the B mass, Delta E near zero
    assert np.median(tags["Btag_mbc"][correct]) == pytest.approx(5.279, abs=0.005)
    assert abs(np.median(tags["Btag_deltaE"][correct])) < 0.05
