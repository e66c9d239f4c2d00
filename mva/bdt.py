"""k-fold xgboost BDTs: training, out-of-fold scoring, JSON model files with features and hash.

Every event belongs to one fold, fixed by its run and event numbers (:func:`fold_of`). The model
of fold ``f`` is trained on the other folds and scores the events of fold ``f`` only, so no
simulated event is ever scored by a model that saw it; data are scored the same way.

The model file is one JSON document: the name, the ordered feature list, the number of folds,
each fold's booster as xgboost JSON, and the SHA-256 of the boosters (checked on load).

Systematic variations that shift a few inputs re-score only the events whose shifted inputs
cross one of the model's split thresholds (:meth:`KFoldBDT.rescore`): every other event takes
the same path through every tree, so its score is unchanged, exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from knunu.errors import InputError, ModelError
from knunu.rundir import write_json

log = logging.getLogger(__name__)


def fold_of(run: np.ndarray, event: np.ndarray, folds: int) -> np.ndarray:
    """The fold of each event: a hash of (run, event) modulo ``folds``.

    >>> fold_of(np.array([7, 7, 7]), np.array([0, 1, 2]), 4).tolist()
    [3, 0, 2]
    """
    key = (np.asarray(run, dtype=np.uint64) * np.uint64(0x9E3779B1)) ^ np.asarray(
        event, dtype=np.uint64
    )
    key = (key * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(33)
    return (key % np.uint64(folds)).astype(np.int64)


#: MC truth: the ``__event__`` of the generated event an entry is a detector copy of (-1:
#: none; knunu's continuum MC, :attr:`knunu.simulation.production.Targeting.copies`).
COPY_OF = "mcCopyOf"


def int_keys(values: np.ndarray) -> np.ndarray:
    """Integer keys (event numbers, library entries); a missing value is -1.

    A NaN is a missing value: the data rows of a table of several datasets lack MC truth.

    >>> int_keys(np.array([3.0, np.nan])).tolist()
    [3, -1]
    """
    values = np.asarray(values)
    if values.dtype.kind == "f":
        values = np.nan_to_num(values, nan=-1.0)
    return values.astype(np.int64)


def fold_events(columns: Mapping[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
    """The event numbers that fix the folds: ``__event__``, or a detector copy's event.

    Every copy of a generated event is then in one fold (a BDT never scores a copy of an
    event it was trained on). Columns without ``mcCopyOf`` (data, basf2's MC):
    ``__event__``; a missing value (NaN in a table of several datasets) counts as -1.

    >>> cols = {"__event__": np.array([0, 1, 2, 3]), "mcCopyOf": np.array([0, -1, 0, 0])}
    >>> fold_events(cols).tolist(), fold_events(cols, np.array([3, 1])).tolist()
    ([0, 1, 0, 0], [0, 1])
    """
    event = np.asarray(columns["__event__"])
    copy_of = columns.get(COPY_OF)
    if rows is not None:
        event = event[rows]
        copy_of = None if copy_of is None else np.asarray(copy_of)[rows]
    if copy_of is None:
        return event
    copy_of = int_keys(copy_of)
    return np.where(copy_of >= 0, copy_of, event)


#: A copy group's key: this bit, then the run number (31 bits), then ``mcCopyOf`` (20 bits),
#: apart from every decay-library entry and unique in a dataset (its files have their own runs).
_COPY_BIT, _COPY_EVENT_BITS = 52, 20


def copy_groups(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per row, a key the detector copies of one generated event share (-1: not a copy).

    A missing ``mcCopyOf`` (NaN: data rows in a table of several datasets) is -1.

    >>> copy_groups({"__run__": np.array([3, 3]), "mcCopyOf": np.array([-1.0, 5.0])}).tolist()
    [-1, 4503599630516229]

    Raises:
        InputError: an ``mcCopyOf`` does not fit its 20 bits.
    """
    if COPY_OF not in columns:
        return np.full(len(columns["__run__"]), -1, dtype=np.int64)
    copy_of = int_keys(columns[COPY_OF])
    if len(copy_of) and copy_of.max() >= 1 << _COPY_EVENT_BITS:
        raise InputError(f"{COPY_OF} {copy_of.max()} above 2^{_COPY_EVENT_BITS}")
    run = np.asarray(columns["__run__"]).astype(np.int64) & 0x7FFFFFFF
    key = (1 << _COPY_BIT) | (run << _COPY_EVENT_BITS) | copy_of
    return np.where(copy_of >= 0, key, -1)


def matrix(columns: Mapping[str, np.ndarray], features: tuple[str, ...]) -> np.ndarray:
    """The (events, features) float32 matrix in the model's feature order."""
    missing = [f for f in features if f not in columns]
    if missing:
        raise ModelError(f"inputs missing for the BDT: {', '.join(missing)}")
    return np.column_stack([np.asarray(columns[f], dtype=np.float32) for f in features])


@dataclass(frozen=True)
class KFoldBDT:
    """A k-fold BDT: one booster per fold, each scoring only its own fold."""

    name: str
    features: tuple[str, ...]
    boosters: tuple[xgb.Booster, ...]
    sha256: str

    @property
    def folds(self) -> int:
        """Number of folds."""
        return len(self.boosters)

    def predict(
        self, columns: Mapping[str, np.ndarray], run: np.ndarray, event: np.ndarray
    ) -> np.ndarray:
        """Scores in [0, 1], each event by the model of its own fold (never trained on it)."""
        x = matrix(columns, self.features)
        fold = fold_of(run, event, self.folds)
        out = np.empty(len(x), dtype=np.float64)
        for f, booster in enumerate(self.boosters):
            rows = np.flatnonzero(fold == f)
            if len(rows):
                out[rows] = booster.inplace_predict(x[rows])
        return out

    def score(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """:meth:`predict` with the folds of the columns' ``__run__`` and :func:`fold_events`."""
        return self.predict(columns, columns["__run__"], fold_events(columns))

    @cached_property
    def splits(self) -> dict[str, np.ndarray]:
        """Per feature, the sorted float32 split thresholds of every tree of every fold."""
        found: dict[int, list[float]] = {}
        for booster in self.boosters:
            model = json.loads(_raw(booster))["learner"]["gradient_booster"]["model"]
            for tree in model["trees"]:
                for left, index, value in zip(
                    tree["left_children"],
                    tree["split_indices"],
                    tree["split_conditions"],
                    strict=True,
                ):
                    if left != -1:  # an inner node: go left if x < value
                        found.setdefault(index, []).append(value)
        return {
            f: np.unique(np.asarray(found.get(i, []), dtype=np.float32))
            for i, f in enumerate(self.features)
        }

    def same_path(
        self,
        before: Mapping[str, np.ndarray],
        after: Mapping[str, np.ndarray],
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """True for events that take the same path through every tree under both inputs.

        An event's path changes only if an input moves across a split threshold (or to or from
        NaN, which follows the default branch); comparisons are in float32 like xgboost's.
        Inputs that are the same array in both mappings are not compared.

        Args:
            before: The inputs the known scores were computed from.
            after: The shifted inputs.
            rows: Compare only these events (default all).

        >>> import numpy as np, xgboost as xgb
        >>> x = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
        >>> b = xgb.train({"max_depth": 1}, xgb.DMatrix(x, label=[0, 0, 1, 1]), 1)
        >>> m = KFoldBDT("m", ("x",), (b,), "")
        >>> m.splits
        {'x': array([2.], dtype=float32)}
        >>> m.same_path({"x": x[:, 0]}, {"x": x[:, 0] - 0.5}).tolist()
        [True, True, False, True]
        """
        n = len(next(iter(after.values()))) if rows is None else len(rows)
        same = np.ones(n, dtype=bool)
        for f, th in self.splits.items():
            a, b = before[f], after[f]
            if a is b or not len(th):
                continue
            a = np.asarray(a if rows is None else a[rows], dtype=np.float32)
            b = np.asarray(b if rows is None else b[rows], dtype=np.float32)
            same &= np.searchsorted(th, a, side="right") == np.searchsorted(th, b, side="right")
            same &= np.isnan(a) == np.isnan(b)
        return same

    def rescore(
        self,
        scores: np.ndarray,
        before: Mapping[str, np.ndarray],
        after: Mapping[str, np.ndarray],
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scores under shifted inputs ``after``, given the ``scores`` under ``before``.

        Identical to ``predict`` on ``after``; only events whose path changes are evaluated.

        Args:
            scores: The known scores (of ``rows`` if given, else of all events).
            before: The inputs of the known scores, with ``__run__`` and ``__event__`` (and
                ``mcCopyOf`` where there is one).
            after: The shifted inputs, same layout.
            rows: The events to score (default all).
        """
        out = np.array(scores, dtype=np.float64)
        moved = np.flatnonzero(~self.same_path(before, after, rows))
        if len(moved):
            idx = moved if rows is None else rows[moved]
            sub = {f: np.asarray(after[f])[idx] for f in self.features}
            out[moved] = self.predict(sub, after["__run__"][idx], fold_events(after, idx))
        return out

    def save(self, path: str | Path) -> Path:
        """Write the model file (atomically)."""
        return write_json(
            path,
            {
                "name": self.name,
                "features": list(self.features),
                "folds": self.folds,
                "sha256": self.sha256,
                "boosters": [json.loads(_raw(b)) for b in self.boosters],
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> KFoldBDT:
        """Read a model file written by :meth:`save`.

        Raises:
            ModelError: the file is missing, not a model file, or its hash does not match.
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            raws = [json.dumps(b, separators=(",", ":")).encode() for b in doc["boosters"]]
            boosters = []
            for raw in raws:
                booster = xgb.Booster()
                booster.load_model(bytearray(raw))
                booster.set_param({"nthread": 1})
                boosters.append(booster)
            name, features, sha = doc["name"], tuple(doc["features"]), doc["sha256"]
        except FileNotFoundError:
            raise ModelError(f"{path}: model file not found") from None
        except (ValueError, KeyError, TypeError, xgb.core.XGBoostError) as exc:
            raise ModelError(f"{path}: not a knunu BDT model file ({exc})") from None
        if _digest(boosters) != sha:
            raise ModelError(f"{path}: model hash mismatch (file edited or truncated)")
        return cls(name, features, tuple(boosters), sha)


def _raw(booster: xgb.Booster) -> str:
    return bytes(booster.save_raw("json")).decode()


def _digest(boosters: list[xgb.Booster] | tuple[xgb.Booster, ...]) -> str:
    h = hashlib.sha256()
    for b in boosters:
        h.update(json.dumps(json.loads(_raw(b)), sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def train_kfold(
    name: str,
    columns: Mapping[str, np.ndarray],
    label: np.ndarray,
    weight: np.ndarray,
    features: tuple[str, ...],
    params: Mapping[str, Any],
    folds: int,
    seed: int,
) -> KFoldBDT:
    """Train one booster per fold on the other folds (binary logistic, tree_method hist).

    With ``early_stopping_rounds`` the number of rounds is learnt per fold, never from the
    fold it scores: trained on the other folds but one, validated on that one (held-out
    logloss), stopped when it has not improved for that many rounds, then retrained on all
    the other folds with the best number (at most ``rounds``; 0 when the first round already
    does not validate: the model is the constant it starts from). A reweighting classifier
    trained on few data events then learns what validates, not their noise.

    Args:
        name: Model name (``bdt1``, ...).
        columns: Inputs plus ``__run__`` and ``__event__``.
        label: 1 for the signal class, 0 for the other.
        weight: Training weights (already balanced between the classes as wanted).
        features: Input names, in order.
        params: ``max_depth``, ``learning_rate``, ``rounds``, optional ``min_child_weight``
            and ``early_stopping_rounds``.
        folds: Number of folds.
        seed: Seeds xgboost (identical inputs and seed give identical models).

    Raises:
        ModelError: a fold has no events of one class to train on, or early stopping with
            fewer than 3 folds. (A fold whose validation fold is empty, or whose other folds
            hold one class, keeps 0 rounds, with a warning.)
    """
    x = matrix(columns, features)
    fold = fold_of(columns["__run__"], fold_events(columns), folds)
    booster_params = _booster_params(name, params, folds, seed)
    patience = params.get("early_stopping_rounds")
    boosters = []
    for f in range(folds):
        train = fold != f
        classes = set(np.unique(label[train]).tolist())
        if classes != {0, 1}:
            raise ModelError(f"{name}: fold {f} has only class(es) {sorted(classes)} to train on")
        rounds = int(params["rounds"])
        if patience is not None:
            sample = (x, label, weight, fold)
            rounds = _fold_rounds(name, booster_params, sample, (f, folds), rounds, int(patience))
        dtrain = xgb.DMatrix(x[train], label=label[train], weight=weight[train])
        boosters.append(xgb.train(booster_params, dtrain, num_boost_round=rounds))
        log.info("%s fold %d/%d trained on %d events", name, f + 1, folds, int(train.sum()))
    return KFoldBDT(name, tuple(features), tuple(boosters), _digest(boosters))


def _booster_params(name: str, params: Mapping[str, Any], folds: int, seed: int) -> dict[str, Any]:
    """The xgboost parameters of :func:`train_kfold`.

    Raises:
        ModelError: early stopping with fewer than 3 folds.
    """
    booster_params = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": int(params["max_depth"]),
        "learning_rate": float(params["learning_rate"]),
        "min_child_weight": float(params.get("min_child_weight", 1.0)),
        "seed": seed,
        "eval_metric": "logloss",
    }
    if params.get("early_stopping_rounds") is not None:
        if folds < 3:
            raise ModelError(
                f"{name}: early_stopping_rounds needs folds >= 3 (each booster validates on a "
                f"training fold that is not the one it scores), got folds = {folds}"
            )
        booster_params["base_score"] = 0.5  # start from no separation: 0 rounds is p = 0.5
    return booster_params


def _fold_rounds(
    name: str,
    booster_params: Mapping[str, Any],
    sample: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    which: tuple[int, int],
    rounds: int,
    patience: int,
) -> int:
    """Rounds of fold ``f``'s booster (``which``: f, folds), learnt on the next fold.

    ``sample``: (inputs, labels, weights, fold of each event).
    """
    x, label, weight, fold = sample
    f, folds = which
    train = fold != f
    valid = fold == (f + 1) % folds
    if set(np.unique(label[train & ~valid]).tolist()) != {0, 1} or not valid.any():
        # nothing to validate on: nothing it learns could be told from noise
        log.warning(
            "%s fold %d/%d: its validation fold is empty or the rest holds one class; "
            "0 rounds (the constant p = 0.5)", name, f + 1, folds,
        )  # fmt: skip
        rounds = 0
    else:
        rounds = _validated_rounds(
            booster_params, x, label, weight, train & ~valid, valid, rounds, patience
        )
    log.info("%s fold %d/%d: %d rounds validate", name, f + 1, folds, rounds)
    return rounds


def _validated_rounds(
    params: Mapping[str, Any],
    x: np.ndarray,
    label: np.ndarray,
    weight: np.ndarray,
    train: np.ndarray,
    valid: np.ndarray,
    rounds: int,
    patience: int,
) -> int:
    """Rounds (0 to ``rounds``) that minimise the held-out weighted logloss, early stopped."""
    dtrain = xgb.DMatrix(x[train], label=label[train], weight=weight[train])
    dvalid = xgb.DMatrix(x[valid], label=label[valid], weight=weight[valid])
    history: dict[str, Any] = {}
    xgb.train(
        params, dtrain, num_boost_round=rounds, evals=[(dvalid, "valid")],
        early_stopping_rounds=patience, evals_result=history, verbose_eval=False,
    )  # fmt: skip
    losses = np.asarray(history["valid"]["logloss"])
    # against the constant start (p = 0.5: logloss ln 2 for any labels and weights), no
    # round that does not beat it is kept
    best = int(np.argmin(losses))
    return best + 1 if losses[best] < np.log(2.0) else 0
