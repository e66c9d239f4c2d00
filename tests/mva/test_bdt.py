"""k-fold BDTs, the eta transform and the model files: definitions that can fail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from knunu.errors import ModelError
from knunu.mva.bdt import KFoldBDT, copy_groups, fold_of, train_kfold
from knunu.mva.eta import EtaTransform
from knunu.mva.train import bdtc_weight, offres_chi2, weighted_auc

DEEP = {"max_depth": 8, "learning_rate": 0.3, "rounds": 150, "min_child_weight": 0.0}


def _noise_table(n: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    cols = {f"x{k}": rng.normal(size=n) for k in range(5)}
    cols["__run__"] = np.full(n, 17)
    cols["__event__"] = np.arange(n)
    return cols, rng.integers(0, 2, n)  # labels independent of the inputs


def test_no_event_is_scored_by_a_model_that_saw_it():
    rng = np.random.default_rng(3)
    cols, label = _noise_table(6000, rng)
    features = tuple(f"x{k}" for k in range(5))
    model = train_kfold("noise", cols, label, np.ones(len(label)), features, DEEP, 4, seed=1)
    # deep trees memorise noise: a model scoring its own training events separates them ...
    fold = fold_of(cols["__run__"], cols["__event__"], 4)
    x = np.column_stack([cols[f] for f in features]).astype(np.float32)
    seen = fold != 0
    memorised = weighted_auc(
        model.boosters[0].inplace_predict(x[seen]), label[seen], np.ones(seen.sum())
    )
    assert memorised > 0.9
    # ... while every event's own score comes from the model that never saw it: no separation
    score = model.predict(cols, cols["__run__"], cols["__event__"])
    assert weighted_auc(score, label, np.ones(len(label))) == pytest.approx(0.5, abs=0.03)
    np.testing.assert_array_equal(score[fold == 2], model.boosters[2].inplace_predict(x[fold == 2]))


def test_folds_are_balanced_and_fixed_by_run_and_event():
    fold = fold_of(np.repeat(np.arange(10), 1000), np.tile(np.arange(1000), 10), 5)
    assert np.all(np.abs(np.bincount(fold) - 2000) < 100)
    again = fold_of(np.repeat(np.arange(10), 1000), np.tile(np.arange(1000), 10), 5)
    np.testing.assert_array_equal(fold, again)


def test_training_fails_when_a_fold_lacks_a_class():
    cols = {"x": np.arange(8.0), "__run__": np.zeros(8, int), "__event__": np.arange(8)}
    with pytest.raises(ModelError, match="fold"):
        train_kfold("one", cols, np.zeros(8, int), np.ones(8), ("x",), DEEP, 2, seed=1)


def test_early_stopping_refuses_folds_it_cannot_validate_on(caplog):
    rng = np.random.default_rng(3)
    cols = {"x": rng.normal(size=400), "__run__": np.zeros(400, int), "__event__": np.arange(400)}
    label, weight = rng.integers(0, 2, 400), np.ones(400)
    params = {"max_depth": 2, "learning_rate": 0.3, "rounds": 5, "early_stopping_rounds": 3}
    with pytest.raises(ModelError, match="needs folds >= 3"):
        train_kfold("bdtc", cols, label, weight, ("x",), params, 2, 1)
    # the signal class only in folds 1 and 2: fold 1's booster validates on fold 2, and the
    # folds it then trains on (0 and 3) hold one class
    fold = fold_of(cols["__run__"], cols["__event__"], 4)
    label = np.isin(fold, (1, 2)).astype(int)
    with caplog.at_level("WARNING", logger="knunu.mva.bdt"):
        model = train_kfold("bdtc", cols, label, weight, ("x",), params, 4, 1)
    assert "bdtc fold 2/4: its validation fold is empty" in caplog.text
    assert "fold 1/4: its" not in caplog.text
    assert model.boosters[1].num_boosted_rounds() == 0  # said, and the constant kept


def test_model_file_round_trip_and_tamper_check(tmp_path):
    rng = np.random.default_rng(4)
    cols, _ = _noise_table(2000, rng)
    label = (cols["x0"] + 0.5 * rng.normal(size=2000) > 0).astype(int)
    features = ("x0", "x1")
    params = {"max_depth": 3, "learning_rate": 0.1, "rounds": 30}
    a = train_kfold("m", cols, label, np.ones(2000), features, params, 3, seed=9)
    b = train_kfold("m", cols, label, np.ones(2000), features, params, 3, seed=9)
    assert a.sha256 == b.sha256  # same inputs and seed: the same model
    path = a.save(tmp_path / "m.json")
    loaded = KFoldBDT.load(path)
    assert loaded.features == features
    assert loaded.folds == 3
    np.testing.assert_array_equal(
        loaded.predict(cols, cols["__run__"], cols["__event__"]),
        a.predict(cols, cols["__run__"], cols["__event__"]),
    )
    assert (
        weighted_auc(a.predict(cols, cols["__run__"], cols["__event__"]), label, np.ones(2000))
        > 0.8
    )
    doc = json.loads(path.read_text())
    doc["boosters"][1]["learner"]["gradient_booster"]["model"]["trees"][0]["split_conditions"][
        0
    ] += 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="hash mismatch"):
        KFoldBDT.load(path)
    with pytest.raises(ModelError, match="inputs missing"):
        a.predict({"x0": cols["x0"]}, cols["__run__"], cols["__event__"])


def test_eta_bins_hold_their_share_of_all_produced_signal():
    rng = np.random.default_rng(5)
    scores = rng.beta(5, 2, 30_000)
    weights = rng.uniform(0.5, 1.5, 30_000)
    produced = weights.sum() / 0.3  # 30 % of the produced signal reaches the BDT2 stage
    eta = EtaTransform.fit(scores, weights, produced)(scores)
    assert np.all(np.diff(eta[np.argsort(scores)]) >= 0)  # monotone in the score
    largest = weights.max() / produced
    for lo in (0.92, 0.94, 0.96, 0.98):
        share = weights[(eta > lo) & (eta <= lo + 0.02)].sum() / produced
        assert share == pytest.approx(0.02, abs=largest)
    assert weights[eta > 0.92].sum() / produced == pytest.approx(0.08, abs=largest)
    assert eta.min() == pytest.approx(0.7, abs=largest)  # 1 - selected share of produced


def test_eta_file_round_trip_and_bad_inputs(tmp_path):
    t = EtaTransform.fit(np.array([0.2, 0.8]), np.ones(2), 10.0)
    loaded = EtaTransform.load(t.save(tmp_path / "eta.json"))
    np.testing.assert_array_equal(loaded(np.array([0.1, 0.5, 0.9])), t(np.array([0.1, 0.5, 0.9])))
    with pytest.raises(ModelError, match="produced signal"):
        EtaTransform.fit(np.array([0.2, 0.8]), np.ones(2), 1.0)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ModelError, match="not an eta transform"):
        EtaTransform.load(tmp_path / "bad.json")


def test_bdtc_weight_is_the_likelihood_ratio():
    p = np.array([0.2, 0.5, 2 / 3])
    np.testing.assert_allclose(bdtc_weight(p, (0.1, 10.0)), [0.25, 1.0, 2.0])


def test_rescoring_shifted_inputs_equals_a_full_evaluation():
    rng = np.random.default_rng(9)
    cols, _ = _noise_table(20000, rng)
    label = (cols["x0"] + cols["x1"] * cols["x2"] + 0.3 * rng.normal(size=20000) > 0).astype(int)
    features = tuple(f"x{k}" for k in range(5))
    params = {"max_depth": 4, "learning_rate": 0.1, "rounds": 80}
    model = train_kfold("shift", cols, label, np.ones(len(label)), features, params, 3, seed=2)
    nominal = model.predict(cols, cols["__run__"], cols["__event__"])
    for delta in (0.002, 0.05, 1.0):
        shifted = {**cols, "x1": cols["x1"] * (1 + delta), "x4": cols["x4"] - delta}
        shifted["x1"][:50] = np.nan  # to NaN: the default branch
        full = model.predict(shifted, cols["__run__"], cols["__event__"])
        moved = ~model.same_path(cols, shifted)
        # a small shift moves few events across a split, a large one most: the check has teeth
        assert 50 <= moved.sum() < len(moved)
        np.testing.assert_array_equal(model.rescore(nominal, cols, shifted), full)
        # every event that kept its path kept its score
        np.testing.assert_array_equal(full[~moved], nominal[~moved])
    assert set(model.splits) == set(features)
    assert all(np.all(np.diff(th) > 0) for th in model.splits.values())


BDTC_LIKE = {"max_depth": 3, "learning_rate": 0.05, "rounds": 150, "min_child_weight": 5.0}


def test_early_stopping_learns_what_validates_and_not_noise():
    rng = np.random.default_rng(11)
    cols, noise = _noise_table(6000, rng)  # a reweighting classifier on few events: no signal
    features = tuple(f"x{k}" for k in range(5))
    stopped = {**BDTC_LIKE, "early_stopping_rounds": 20}
    run, event = cols["__run__"], cols["__event__"]
    free = train_kfold("c", cols, noise, np.ones(6000), features, BDTC_LIKE, 4, seed=3)
    held = train_kfold("c", cols, noise, np.ones(6000), features, stopped, 4, seed=3)
    w_free = bdtc_weight(free.predict(cols, run, event), (0.2, 5.0))
    w_held = bdtc_weight(held.predict(cols, run, event), (0.2, 5.0))
    # 150 rounds on noise give weights that scatter; the validated rounds stay near 1
    assert np.std(w_free) > 0.15
    assert np.std(w_held) < 0.05
    assert sum(b.num_boosted_rounds() for b in held.boosters) < 40
    # a real difference is still learnt (and as well as with the fixed rounds)
    label = (cols["x0"] + 0.7 * rng.normal(size=6000) > 0).astype(int)
    learnt = train_kfold("c", cols, label, np.ones(6000), features, stopped, 4, seed=3)
    fixed = train_kfold("c", cols, label, np.ones(6000), features, BDTC_LIKE, 4, seed=3)
    auc_learnt = weighted_auc(learnt.predict(cols, run, event), label, np.ones(6000))
    auc_fixed = weighted_auc(fixed.predict(cols, run, event), label, np.ones(6000))
    assert auc_learnt > 0.8
    assert auc_learnt > auc_fixed - 0.01
    assert all(b.num_boosted_rounds() > 10 for b in learnt.boosters)


def test_the_rounds_of_a_fold_never_come_from_the_fold_it_scores():
    rng = np.random.default_rng(12)
    cols, _ = _noise_table(4000, rng)
    label = (cols["x0"] + rng.normal(size=4000) > 0).astype(int)
    features = ("x0", "x1")
    stopped = {**BDTC_LIKE, "early_stopping_rounds": 10}
    fold = fold_of(cols["__run__"], cols["__event__"], 4)
    scrambled = label.copy()
    scrambled[fold == 0] = rng.permutation(label[fold == 0])
    a = train_kfold("c", cols, label, np.ones(4000), features, stopped, 4, seed=5)
    b = train_kfold("c", cols, scrambled, np.ones(4000), features, stopped, 4, seed=5)
    # fold 0's labels changed: only the booster that scores fold 0 never saw them
    x = np.column_stack([cols[f] for f in features]).astype(np.float32)
    np.testing.assert_array_equal(
        a.boosters[0].inplace_predict(x), b.boosters[0].inplace_predict(x)
    )
    assert not np.array_equal(a.boosters[1].inplace_predict(x), b.boosters[1].inplace_predict(x))


def test_offres_chi2_counts_detector_copies_as_one_event():
    """MC made of copies of a few events: its variance is that of the events, not the copies'."""
    rng = np.random.default_rng(3)
    n, copies = 400, 4
    eta_edges = np.linspace(0.5, 1.0, 6)
    eta_data, q2_data = rng.uniform(0.5, 1.0, 4000), rng.uniform(0.0, 20.0, 4000)
    eta_mc, q2_mc = rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 20.0, n)
    eta = np.concatenate([eta_data, np.tile(eta_mc, copies)])
    q2 = np.concatenate([q2_data, np.tile(q2_mc, copies)])
    is_data = np.concatenate([np.ones(4000, int), np.zeros(n * copies, int)])
    weight = np.concatenate([np.ones(4000), np.full(n * copies, 1.0 / copies)])
    cols = {
        "__run__": np.ones(len(eta), np.int64),
        "mcCopyOf": np.concatenate([np.full(4000, np.nan), np.tile(np.arange(n), copies)]),
    }
    naive, ndf = offres_chi2(eta, q2, is_data, weight, eta_edges)
    grouped, ndf_grouped = offres_chi2(eta, q2, is_data, weight, eta_edges, copy_groups(cols))
    single, _ = offres_chi2(
        np.concatenate([eta_data, eta_mc]),
        np.concatenate([q2_data, q2_mc]),
        np.concatenate([np.ones(4000, int), np.zeros(n, int)]),
        np.ones(4000 + n),
        eta_edges,
    )
    assert ndf == ndf_grouped
    assert grouped == pytest.approx(single, rel=1e-9)  # the copies are the events they copy
    assert naive > 1.5 * grouped
