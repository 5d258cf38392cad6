"""The overfitting call-out does not cry wolf: an ordinary run (training a few points
above validation, a tiny validation split, a noisy validation loss) gets no red banner;
a real overfit (validation loss rising for epochs while the train-validation gap grows
past the validation split's sampling noise) does."""

from __future__ import annotations

import math

import pytest

from transferkit.reports.html import ReportContent
from transferkit.reports.metrics import overfitting_gap
from transferkit.reports.sections import training_section


def history_of(train_acc, val_acc, val_loss, train_loss=None):
    n = len(train_acc)
    train_loss = train_loss or [1.0 / (e + 1) for e in range(n)]  # always falling
    return [
        {"phase": "head", "epoch": e + 1, "phase_epoch": e + 1, "train_acc": train_acc[e],
         "val_acc": val_acc[e], "train_loss": train_loss[e], "val_loss": val_loss[e],
         "lr": 1e-3, "seconds": 0.1}
        for e in range(n)
    ]  # fmt: skip


def ordinary_tiny_validation():
    """12 validation images: accuracy moves in steps of 8 points and the loss wobbles
    (lowest at epoch 7, 13% above it at the end); training reaches 100%."""
    return history_of(
        train_acc=[0.50, 0.60, 0.70, 0.80, 0.85, 0.90, 0.95, 0.97, 1.00, 1.00],
        val_acc=[0.50, 0.58, 0.67, 0.75, 0.75, 0.83, 0.83, 0.83, 0.75, 0.83],
        val_loss=[0.90, 0.80, 0.72, 0.65, 0.60, 0.57, 0.55, 0.56, 0.60, 0.62],
    )


def ordinary_fine_tune_gap():
    """1000 validation images, training 14 points above validation (augmentation-free
    training accuracy of a fine-tuned model), validation loss still falling."""
    return history_of(
        train_acc=[0.70, 0.85, 0.92, 0.96, 0.98, 0.99],
        val_acc=[0.70, 0.78, 0.82, 0.84, 0.85, 0.85],
        val_loss=[0.80, 0.60, 0.52, 0.48, 0.46, 0.45],
    )


def real_overfit():
    """200 validation images: validation loss lowest at epoch 5 then up 70% over seven
    epochs, while training accuracy reaches 99% and validation falls to 72%."""
    return history_of(
        train_acc=[0.60, 0.70, 0.78, 0.84, 0.88, 0.91, 0.94, 0.96, 0.97, 0.98, 0.99, 0.99],
        val_acc=[0.60, 0.68, 0.74, 0.78, 0.80, 0.79, 0.77, 0.76, 0.75, 0.74, 0.73, 0.72],
        val_loss=[0.90, 0.70, 0.60, 0.55, 0.52, 0.56, 0.61, 0.67, 0.72, 0.78, 0.83, 0.88],
    )


@pytest.mark.parametrize(
    ("history", "n_val"), [(ordinary_tiny_validation(), 12), (ordinary_fine_tune_gap(), 1000)]
)
def test_an_ordinary_run_is_not_called_overfitting(history, n_val):
    gap = overfitting_gap(history, n_val=n_val)
    assert gap["overfitting"] is False, gap["sentence"]
    assert "was overfitting" not in gap["sentence"]


def test_a_real_overfit_is_called_overfitting():
    gap = overfitting_gap(real_overfit(), n_val=200)
    assert gap["overfitting"] is True
    assert gap["loss_best_epoch"] == 5 and gap["rise_epochs"] == 7
    assert gap["acc_gap"] == pytest.approx(0.27)
    noise = 2 * math.sqrt(0.72 * 0.28 / 200)
    assert gap["gap_needed"] == pytest.approx(max(0.05, noise))
    assert "best at epoch 5 and rose 69% over the 7 epochs after it" in gap["sentence"]
    assert "27 points" in gap["sentence"]


def test_the_same_gap_on_a_tiny_split_is_within_its_noise():
    """Seven validation images: a 27-point gap is less than twice the standard error."""
    gap = overfitting_gap(real_overfit(), n_val=7)
    assert gap["overfitting"] is False
    assert "only 7 validation images" in gap["sentence"]


def test_a_big_gap_without_a_rising_validation_loss_is_not_overfitting():
    history = ordinary_fine_tune_gap()
    gap = overfitting_gap(history, n_val=1000)
    assert gap["acc_gap"] > gap["gap_needed"]  # a real generalisation gap ...
    assert gap["rise_epochs"] == 0 and gap["overfitting"] is False  # ... but no overfit


def test_the_page_shows_a_red_banner_only_for_the_real_overfit():
    def level(history, n_val):
        content = ReportContent(title="t", history=history, record={"n_val": n_val})
        html = training_section(history, None, None, content.overfitting(), content.record)
        return html.split('id="overfitting"')[0].rsplit("callout ", 1)[1].split('"')[0]

    assert level(ordinary_tiny_validation(), 12) != "warn"
    assert level(ordinary_fine_tune_gap(), 1000) != "warn"
    assert level(real_overfit(), 200) == "warn"
