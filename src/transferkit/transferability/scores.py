"""All feature-based scores of one feature matrix (or one per cut), each timed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from ._common import check_xy
from .evidence import logme
from .probes import knn_accuracy, linear_probe_accuracy


@dataclass
class TransferScores:
    """The scores of one (backbone, cut) on one dataset.

    Attributes:
        logme: LogME, higher is better; comparable only on the same data.
        knn_accuracy: cross-validated cosine 5-NN accuracy.
        linear_probe_accuracy: cross-validated logistic-regression accuracy.
        chance: majority-class frequency, the accuracy to beat.
        n_examples, n_classes, n_features: what was scored.
        seconds: how long each score took, by score name.
    """

    logme: float
    knn_accuracy: float
    linear_probe_accuracy: float
    chance: float
    n_examples: int
    n_classes: int
    n_features: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def score_features(features: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> TransferScores:
    """LogME, kNN and linear-probe accuracy of one (N, D) feature matrix, each timed.

    Args:
        features: (N, D) features, e.g. from ``pooled_features_per_cut``.
        labels: (N,) class labels of any type.
        seed: seeds the cross-validation folds.
    """
    x, codes, n_classes = check_xy(features, labels)
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], float]) -> float:
        start = time.perf_counter()
        value = fn()
        seconds[name] = time.perf_counter() - start
        return value

    return TransferScores(
        logme=timed("logme", lambda: logme(x, codes)),
        knn_accuracy=timed("knn_accuracy", lambda: knn_accuracy(x, codes, seed=seed)),
        linear_probe_accuracy=timed(
            "linear_probe_accuracy", lambda: linear_probe_accuracy(x, codes, seed=seed)
        ),
        chance=float(np.bincount(codes).max() / len(codes)),
        n_examples=len(codes),
        n_classes=n_classes,
        n_features=x.shape[1],
        seconds=seconds,
    )


def score_per_cut(
    per_cut: Mapping[str, np.ndarray], labels: np.ndarray, *, seed: int = 0
) -> dict[str, TransferScores]:
    """``score_features`` for each cut's features, keyed and ordered like ``per_cut``.

    Example:
        >>> y = np.repeat([0, 1], 20)
        >>> rng = np.random.default_rng(0)
        >>> low = rng.normal(size=(40, 3))
        >>> cuts = {"low": low, "high": low + np.where(y, 4, -4)[:, None]}
        >>> {c: s.knn_accuracy > 0.9 for c, s in score_per_cut(cuts, y).items()}
        {'low': False, 'high': True}
    """
    return {cut: score_features(f, labels, seed=seed) for cut, f in per_cut.items()}
