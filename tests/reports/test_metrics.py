"""Metric functions agree with scikit-learn and with hand-computed values."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from transferkit.errors import InputError
from transferkit.reports.metrics import (
    Metrics,
    compute_metrics,
    expected_calibration_error,
    most_confident_mistakes,
    overfitting_gap,
)


def random_predictions(seed: int, n: int = 300, k: int = 7, absent: int | None = 6):
    """Random probabilities loosely tied to random labels; class ``absent`` never labelled."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(k) if c != absent]
    labels = rng.choice(present, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += rng.uniform(0, 2.5)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_compute_metrics_matches_sklearn_on_random_predictions(seed):
    k = 7
    probs, labels = random_predictions(seed, k=k, absent=6)
    classes = [f"c{i}" for i in range(k)]
    pred = probs.argmax(axis=1)
    assert 6 not in labels and 6 in pred  # the absent class is still predicted sometimes

    m = compute_metrics(probs, labels, classes)

    everything = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the class absent from y_true
        balanced = skm.balanced_accuracy_score(labels, pred)
    assert m.accuracy == pytest.approx(skm.accuracy_score(labels, pred))
    assert m.balanced_accuracy == pytest.approx(balanced)
    assert set(m.top_k_accuracy) == {1, 3, 5}
    for top in (1, 3, 5):
        expected = skm.top_k_accuracy_score(labels, probs, k=top, labels=everything)
        assert m.top_k_accuracy[top] == pytest.approx(expected)
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, pred, labels=everything, zero_division=0
    )
    assert [c.precision for c in m.per_class] == pytest.approx(p)
    assert [c.recall for c in m.per_class] == pytest.approx(r)
    assert [c.f1 for c in m.per_class] == pytest.approx(f)
    assert [c.support for c in m.per_class] == s.tolist()
    assert m.macro_f1 == pytest.approx(
        skm.f1_score(labels, pred, labels=everything, average="macro", zero_division=0)
    )
    assert m.confusion == skm.confusion_matrix(labels, pred, labels=everything).tolist()
    assert m.classes == classes and m.n == len(labels)
    assert m.per_class[6].support == 0 and m.per_class[6].recall == 0.0


def test_class_absent_and_never_predicted_gives_zeros_not_nan():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    m = compute_metrics(probs, np.array([0, 1, 1]), ["a", "b", "never"])
    never = m.per_class[2]
    assert (never.precision, never.recall, never.f1, never.support) == (0.0, 0.0, 0.0, 0)
    assert m.balanced_accuracy == pytest.approx((1.0 + 0.5) / 2)  # mean over present classes
    assert m.top_k_accuracy == {1: pytest.approx(2 / 3)}  # k >= K is dropped (3 and 5 here)
    assert all(math.isfinite(v) for v in (m.accuracy, m.ece, m.macro_f1))


def test_top1_equals_accuracy_even_with_ties():
    probs = np.array([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    m = compute_metrics(probs, np.array([1, 0, 0]), ["a", "b", "c"], top_k=(1, 2))
    assert m.top_k_accuracy[1] == m.accuracy == pytest.approx(1 / 3)  # ties go to index 0
    assert m.top_k_accuracy[2] == pytest.approx(1.0)


def test_ece_hand_computed_example():
    # 5 bins, right-closed: (0.8, 1.0] holds 0.95 (right), 0.85 (right), 0.85 (wrong):
    #   accuracy 2/3, mean confidence 0.8833 -> 3 * 0.21667 = 0.65
    # (0.4, 0.6] holds 0.5 (right), 0.45 (wrong), 0.6 (wrong, on the edge):
    #   accuracy 1/3, mean confidence 0.51667 -> 3 * 0.18333 = 0.55
    # ECE = (0.65 + 0.55) / 6 = 0.2
    probs = np.array(
        [
            [0.95, 0.05, 0.0],
            [0.85, 0.15, 0.0],
            [0.85, 0.15, 0.0],
            [0.5, 0.3, 0.2],
            [0.45, 0.35, 0.2],
            [0.6, 0.4, 0.0],
        ]
    )
    labels = np.array([0, 0, 1, 0, 1, 1])
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.2)
    assert compute_metrics(probs, labels, ["a", "b", "c"], ece_bins=5).ece == pytest.approx(0.2)


def test_ece_is_zero_when_perfectly_calibrated_and_one_bin_is_the_plain_gap():
    certain = np.eye(3)
    assert expected_calibration_error(certain, np.array([0, 1, 2])) == 0.0
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    # One bin: |accuracy 0.5 - mean confidence 0.85|
    assert expected_calibration_error(probs, np.array([0, 1]), bins=1) == pytest.approx(0.35)


def test_ece_bin_edges_do_not_drift_with_floating_point():
    # 0.7 * 10 == 7.000000000000001; 0.7 must still fall in (0.6, 0.7] with 0.65:
    # one bin, accuracy 1/2, confidence 0.675 -> 0.175 (apart they would give 0.475).
    probs = np.array([[0.7, 0.3], [0.65, 0.35]])
    assert expected_calibration_error(probs, np.array([0, 1]), bins=10) == pytest.approx(0.175)


def test_most_confident_mistakes_order():
    probs = np.array(
        [
            [0.9, 0.1],  # 0: right
            [0.3, 0.7],  # 1: wrong, 0.7
            [0.05, 0.95],  # 2: wrong, 0.95
            [0.4, 0.6],  # 3: wrong, 0.6
            [0.2, 0.8],  # 4: right
            [0.3, 0.7],  # 5: wrong, 0.7 (tie with 1: index order)
        ]
    )
    labels = np.array([0, 0, 0, 0, 1, 0])
    assert most_confident_mistakes(probs, labels) == [2, 1, 5, 3]
    assert most_confident_mistakes(probs, labels, k=2) == [2, 1]
    assert most_confident_mistakes(probs, labels, k=0) == []
    assert most_confident_mistakes(np.eye(2), np.array([0, 1])) == []


@pytest.mark.parametrize(
    ("probs", "labels", "classes", "match"),
    [
        (np.array([[2.0, -1.0]]), np.array([0]), ["a", "b"], "logits"),
        (np.array([[0.5, 0.5]]), np.array([2]), ["a", "b"], "out of range"),
        (np.array([[0.5, 0.5]]), np.array([0, 1]), ["a", "b"], "shape"),
        (np.array([[0.5, 0.5]]), np.array([0]), ["a", "b", "c"], "3 classes"),
        (np.array([[0.5, 0.5]]), np.array([0]), ["a", "a"], "unique"),
        (np.array([[0.5, np.nan]]), np.array([0]), ["a", "b"], "NaN"),
        (np.zeros((0, 2)), np.array([], dtype=int), ["a", "b"], "non-empty"),
        (np.array([[0.5, 0.5]]), np.array([0.5]), ["a", "b"], "integer"),
    ],
)
def test_bad_input_raises_input_error_naming_the_problem(probs, labels, classes, match):
    with pytest.raises(InputError, match=match):
        compute_metrics(probs, labels, classes)


def test_bad_options_raise_input_error():
    probs, labels = np.array([[0.6, 0.4]]), np.array([0])
    with pytest.raises(InputError, match="top_k"):
        compute_metrics(probs, labels, ["a", "b"], top_k=(0,))
    with pytest.raises(InputError, match="bins"):
        expected_calibration_error(probs, labels, bins=0)
    with pytest.raises(InputError, match="k must"):
        most_confident_mistakes(probs, labels, k=-1)


def test_metrics_dict_survives_a_json_round_trip():
    probs, labels = random_predictions(7, n=50, k=6, absent=None)
    m = compute_metrics(probs, labels, list("abcdef"))
    data = json.loads(json.dumps(m.to_dict()))
    assert data["top_k_accuracy"].keys() == {"1", "3", "5"}
    assert data["per_class"][0].keys() == {"name", "precision", "recall", "f1", "support"}
    assert Metrics.from_dict(data) == m
    with pytest.raises(InputError, match="not a metrics dict"):
        Metrics.from_dict({"accuracy": 1.0})


def _row(epoch, phase, train_acc, val_acc, train_loss, val_loss):
    return {
        "phase": phase, "epoch": epoch, "train_acc": train_acc, "val_acc": val_acc,
        "train_loss": train_loss, "val_loss": val_loss, "lr": 1e-3, "seconds": 1.0,
    }  # fmt: skip


def test_overfitting_gap_reports_when_validation_stopped_improving():
    history = [
        _row(1, "head", 0.60, 0.58, 1.0, 1.05),
        _row(2, "head", 0.75, 0.70, 0.7, 0.80),
        _row(3, "fine-tune", 0.85, 0.78, 0.5, 0.60),  # best val loss
        _row(4, "fine-tune", 0.93, 0.77, 0.3, 0.66),
        _row(5, "fine-tune", 0.97, 0.76, 0.2, 0.70),
        _row(6, "fine-tune", 0.99, 0.75, 0.1, 0.75),
    ]
    gap = overfitting_gap(history)
    assert gap["monitor"] == "val_loss"
    assert (gap["best_epoch"], gap["best_phase"], gap["best_value"]) == (3, "fine-tune", 0.60)
    assert gap["final_epoch"] == 6 and gap["epochs_since_best"] == 3
    assert gap["stopped_improving"] is True
    assert gap["acc_gap"] == pytest.approx(0.24) and gap["loss_gap"] == pytest.approx(0.65)
    assert gap["overfitting"] is True
    assert "epoch 3" in gap["sentence"] and "3 epochs after" in gap["sentence"]
    assert "overfitting" in gap["sentence"]


def test_overfitting_gap_still_improving_and_small_gap():
    history = [
        _row(e, "head", 0.5 + 0.05 * e, 0.48 + 0.05 * e, 1 / e, 1.1 / e) for e in range(1, 6)
    ]
    gap = overfitting_gap(history)
    assert gap["best_epoch"] == 5 and gap["epochs_since_best"] == 0
    assert gap["stopped_improving"] is False and gap["overfitting"] is False
    assert "still improving" in gap["sentence"] and "No sign" in gap["sentence"]


def test_overfitting_gap_tolerates_missing_values_and_missing_validation():
    history = [
        _row(1, "head", 0.5, None, 1.0, None),
        _row(2, "head", 0.6, float("nan"), 0.9, float("nan")),
    ]
    gap = overfitting_gap(history)
    assert gap["best_epoch"] is None and gap["overfitting"] is None
    assert "cannot be judged" in gap["sentence"]
    only_acc = [{"epoch": 1, "val_acc": 0.5, "train_acc": 0.6}, {"epoch": 2, "val_acc": 0.7}]
    gap = overfitting_gap(only_acc)
    assert gap["monitor"] == "val_acc" and gap["best_epoch"] == 2
    assert gap["acc_gap"] == pytest.approx(0.1)  # the last epoch that recorded both
    assert gap["loss_gap"] is None and gap["train_loss"] is None
    assert overfitting_gap([])["sentence"] == "No training history was recorded."
