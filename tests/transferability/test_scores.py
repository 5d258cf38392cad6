"""The probes (k-NN and linear, cross-validated) and all scores of a feature matrix."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from helpers import blobs
from transferkit import InputError
from transferkit.transferability import (
    knn_accuracy,
    linear_probe_accuracy,
    logme,
    score_features,
    score_per_cut,
)


def test_probes_separate_blobs_and_fall_to_chance_on_shuffled_labels():
    x, y = blobs(n_per_class=50, n_classes=4)
    assert knn_accuracy(x, y) >= 0.97
    assert linear_probe_accuracy(x, y) >= 0.97
    shuffled = np.random.default_rng(1).permutation(y)
    assert knn_accuracy(x, shuffled) < 0.45  # chance is 0.25
    assert linear_probe_accuracy(x, shuffled) < 0.45


def test_knn_is_cosine_so_feature_norm_does_not_matter():
    x, y = blobs(n_per_class=20, n_classes=3)
    scale = np.random.default_rng(2).uniform(0.1, 10.0, size=(len(y), 1))
    assert knn_accuracy(x * scale, y) == knn_accuracy(x, y)


def test_cross_validation_uses_fewer_folds_for_a_small_class():
    x, y = blobs(n_per_class=10, n_classes=2)
    x, y = x[:12], y[:12]  # 10 of class 0, 2 of class 1: two folds at most
    assert 0.0 <= knn_accuracy(x, y, folds=5) <= 1.0
    assert 0.0 <= linear_probe_accuracy(x, y, folds=5) <= 1.0
    with pytest.raises(InputError, match="at least 2 examples of every class"):
        knn_accuracy(x[:11], y[:11])


def test_probe_arguments_are_checked():
    x, y = blobs(n_per_class=10, n_classes=2)
    with pytest.raises(InputError, match="folds"):
        knn_accuracy(x, y, folds=1)
    with pytest.raises(InputError, match="k must be"):
        knn_accuracy(x, y, k=0)
    with pytest.raises(InputError, match="C must be"):
        linear_probe_accuracy(x, y, C=0.0)


def test_score_features_reports_every_score_and_its_time():
    x, y = blobs(n_per_class=30, n_classes=3)
    scores = score_features(x, y)
    assert scores.knn_accuracy >= 0.95 and scores.linear_probe_accuracy >= 0.95
    assert scores.logme == pytest.approx(logme(x, y))
    assert (scores.n_examples, scores.n_classes, scores.n_features) == (90, 3, 8)
    assert scores.chance == pytest.approx(1 / 3)
    assert set(scores.seconds) == {"logme", "knn_accuracy", "linear_probe_accuracy"}
    assert json.loads(json.dumps(scores.to_dict()))["n_classes"] == 3


def test_score_per_cut_keeps_the_cut_order():
    x, y = blobs(n_per_class=20, n_classes=2)
    noise = np.random.default_rng(3).normal(size=x.shape)
    scores = score_per_cut({"low": noise, "high": x}, y)
    assert list(scores) == ["low", "high"]
    assert scores["high"].logme > scores["low"].logme
    assert scores["high"].knn_accuracy > scores["low"].knn_accuracy


def test_score_features_runtime_on_2000_by_256():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    x = 0.3 * rng.normal(size=(10, 256))[y] + rng.normal(size=(2000, 256))
    start = time.perf_counter()
    scores = score_features(x.astype(np.float32), y)
    total = time.perf_counter() - start
    print(
        f"\nscore_features 2000x256, 10 classes: {total:.2f}s total, "
        + ", ".join(f"{k} {v:.2f}s" for k, v in scores.seconds.items())
    )
    assert scores.linear_probe_accuracy > 0.9
