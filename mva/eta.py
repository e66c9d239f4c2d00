"""The signal-efficiency transform eta(BDT2), normalised to all produced signal.

``eta(s) = 1 - W(score >= s) / W_produced``: the weight of signal scoring at least ``s`` over the
weight of every signal event produced (before any selection). A bin of width 0.02 at the top
then holds 2 % of the produced signal, and eta > 0.92 keeps 8 % of it. Events that fail the
selection or BDT1 have no eta at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from knunu.errors import ModelError
from knunu.rundir import write_json


@dataclass(frozen=True)
class EtaTransform:
    """A monotone map from BDT2 score to eta.

    Attributes:
        scores: Signal scores, ascending (those kept to define the transform).
        tail: ``tail[i]`` = weight of kept signal with score >= ``scores[i]``, over
            ``produced``; one extra trailing 0.
        produced: Weight of all produced signal.
    """

    scores: np.ndarray
    tail: np.ndarray
    produced: float

    @classmethod
    def fit(cls, scores: np.ndarray, weights: np.ndarray, produced: float) -> EtaTransform:
        """Build the transform from the (out-of-fold) BDT2 scores of selected signal.

        >>> t = EtaTransform.fit(np.array([0.1, 0.9, 0.5, 0.7]), np.ones(4), produced=8.0)
        >>> t(np.array([0.9, 0.7, 0.0, 1.0])).tolist()
        [0.875, 0.75, 0.5, 1.0]
        """
        if produced <= 0 or np.sum(weights) > produced * (1 + 1e-9):
            raise ModelError(f"eta: produced signal weight {produced} below the selected weight")
        order = np.argsort(scores, kind="stable")
        s = np.asarray(scores, dtype=np.float64)[order]
        w = np.asarray(weights, dtype=np.float64)[order]
        tail = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]]) / produced
        return cls(s, tail, float(produced))

    def __call__(self, score: np.ndarray) -> np.ndarray:
        """Eta of each score (1 above the highest signal score)."""
        return 1.0 - self.tail[np.searchsorted(self.scores, score, side="left")]

    def save(self, path: str | Path) -> Path:
        """Write the transform as JSON (atomically)."""
        return write_json(
            path,
            {
                "produced": self.produced,
                "scores": self.scores.tolist(),
                "tail": self.tail.tolist(),
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> EtaTransform:
        """Read a transform written by :meth:`save`.

        Raises:
            ModelError: missing or malformed file.
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            scores, tail = np.asarray(doc["scores"], float), np.asarray(doc["tail"], float)
            produced = float(doc["produced"])
        except FileNotFoundError:
            raise ModelError(f"{path}: eta transform not found") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: not an eta transform ({exc})") from None
        if len(tail) != len(scores) + 1 or np.any(np.diff(scores) < 0):
            raise ModelError(f"{path}: eta transform is inconsistent")
        return cls(scores, tail, produced)
