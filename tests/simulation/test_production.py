"""Production: every generated event is written; the catalogue accounts for all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import uproot

from knunu.errors import ConfigError
from knunu.samples import load_samples
from knunu.simulation.production import (
    FileTask,
    luminosity_fb,
    produce_file,
    write_catalogue,
)


def test_tiny_production_accounts_for_every_event(tmp_path):
    tasks = [
        FileTask("signal", 200, 1, str(tmp_path / "signal_1.root")),
        FileTask("charged", 150, 2, str(tmp_path / "charged_2.root")),
        FileTask("mixed", 150, 3, str(tmp_path / "mixed_3.root")),
        FileTask("ccbar", 150, 4, str(tmp_path / "ccbar_4.root")),
        FileTask("ccbar", 100, 5, str(tmp_path / "ccbar_5.root"), off_resonance=True),
        FileTask("taupair", 100, 6, str(tmp_path / "taupair_6.root")),
    ]
    records = [produce_file(t) for t in tasks]
    catalogue = json.loads(write_catalogue(tmp_path / "catalogue.json", records).read_text())
    datasets = catalogue["datasets"]
    assert datasets["ccbar"]["generated"] == 150
    assert datasets["ccbar_offres"]["generated"] == 100
    for task in tasks:
        with uproot.open(task.path) as f:
            tree = f["ita"]
            assert tree.num_entries == task.n_events
            code = load_samples()[task.sample].process_code
            assert set(tree["mcProcess"].array(library="np").tolist()) == {code}
            events = tree["__event__"].array(library="np")
            assert len(np.unique(events)) == task.n_events
    with uproot.open(tasks[0].path) as f:
        q2 = f["ita"]["q2gen"].array(library="np")
        assert np.all((q2 >= 0) & (q2 < 22.9))
    with uproot.open(tasks[3].path) as f:
        assert np.all(f["ita"]["q2gen"].array(library="np") == -1.0)


def test_luminosity_bookkeeping():
    cat = load_samples()
    assert luminosity_fb(cat["ccbar"], 1_300_000) == pytest.approx(1.0)
    # signal: 1985 produced B+- -> K+ nu nubar in 362 fb^-1 at mu = 1 (notes)
    assert 362 / luminosity_fb(cat["signal"], 1) == pytest.approx(1985, rel=0.06)


def test_unknown_sample_and_signal_off_resonance_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown sample 'bogus'"):
        produce_file(FileTask("bogus", 10, 1, str(tmp_path / "x.root")))
    with pytest.raises(ConfigError, match="no B Bbar production off resonance"):
        produce_file(FileTask("signal", 10, 1, str(tmp_path / "y.root"), off_resonance=True))
    assert list(tmp_path.iterdir()) == []


def test_every_nonsignal_sample_has_a_generator():
    from knunu.simulation.generators import PROCESSES

    for name, sample in load_samples().items():
        if name != "signal" and sample.kind != "bbbar":
            assert name in PROCESSES
