"""basf2-style ntuples: TTree layout, jagged candidates with a counter, atomic, reproducible."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot

from knunu.simulation.detector import DetectorConfig, simulate_detector
from knunu.simulation.generators import Generator
from knunu.simulation.kinematics import ON_RESONANCE
from knunu.simulation.ntuple import TREE_ITA, Tree, write_ntuple
from knunu.simulation.reconstruction import ita_variables


def _write(path, seed):
    parts = Generator("ccbar", seed=seed).generate(300)
    seen = simulate_detector(parts, ON_RESONANCE, DetectorConfig(), np.random.default_rng(seed))
    event, cand = ita_variables(seen)
    n = parts.n_events
    header = {
        "__experiment__": np.full(n, 1003, np.int32),
        "__run__": np.full(n, seed, np.int32),
        "__event__": np.arange(n, dtype=np.int64),
        "__weight__": np.ones(n),
        "mcProcess": np.full(n, 6, np.int32),
        "nKL": parts.per_event_sum((np.abs(parts.pdg) == 130).astype(np.int64)).astype(np.int32),
    }
    trees = {TREE_ITA: Tree({**header, **event}, {"K_": (seen.tracks.offsets, cand)})}
    write_ntuple(path, trees, seed)
    return seen, event, cand


def test_ttree_layout_and_contents(tmp_path):
    path = tmp_path / "ccbar.root"
    seen, event, cand = _write(path, 3)
    with uproot.open(path) as f:
        tree = f[TREE_ITA]
        assert isinstance(tree, uproot.TTree)  # a TTree, not an RNTuple
        names = set(tree.keys())
        assert {
            "__experiment__",
            "__run__",
            "__event__",
            "__weight__",
            "nK",
            "K_q2rec",
            "K_kaonID",
            "thrust",
            "theta_miss",
            "mcProcess",
            "nKL",
        } <= names
        assert tree.num_entries == 300
        arrays = tree.arrays(["nK", "K_q2rec", "E_tot"], library="ak")
        np.testing.assert_array_equal(arrays["nK"].to_numpy(), np.diff(seen.tracks.offsets))
        np.testing.assert_allclose(ak.flatten(arrays["K_q2rec"]).to_numpy(), cand["K_q2rec"])
        np.testing.assert_allclose(arrays["E_tot"].to_numpy(), event["E_tot"])
    assert [p.name for p in tmp_path.iterdir()] == ["ccbar.root"]  # no temporary left


def test_same_seed_same_content(tmp_path):
    _write(tmp_path / "a.root", 5)
    _write(tmp_path / "b.root", 5)
    with uproot.open(tmp_path / "a.root") as fa, uproot.open(tmp_path / "b.root") as fb:
        ta, tb = fa[TREE_ITA], fb[TREE_ITA]
        assert fa.file.uuid == fb.file.uuid
        for name in ta.keys():  # noqa: SIM118 - a TTree, not a dict
            a = ta[name].array(library="ak")
            b = tb[name].array(library="ak")
            assert a.tolist() == b.tolist(), name


def test_wrong_length_column_writes_nothing(tmp_path):
    offsets = np.array([0, 1, 2])
    tree = Tree({"__event__": np.arange(3)}, {"K_": (offsets, {"K_p": np.ones(2)})})
    with pytest.raises(ValueError, match=r"different lengths: \[2, 3\]"):
        write_ntuple(tmp_path / "bad.root", {TREE_ITA: tree}, seed=1)
    assert list(tmp_path.iterdir()) == []
