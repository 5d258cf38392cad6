"""Every plot returns valid PNG bytes of a sane size, whatever the input looks like."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from transferkit.errors import InputError
from transferkit.reports.metrics import compute_metrics
from transferkit.reports.plots import plot_confusion, plot_curves, plot_mistakes, plot_per_class

HOSTILE = ["<script>x</script>", "cost $5 & $10", r"$\frac{$", "猫 & 犬", 'q"uote']


def open_png(data: bytes) -> Image.Image:
    assert isinstance(data, bytes) and data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    assert 150 <= image.width <= 4000 and 100 <= image.height <= 4000, image.size
    return image


def two_phase_history(n_head: int = 5, n_fine: int = 4) -> list[dict]:
    rows = []
    for epoch in range(1, n_head + n_fine + 1):
        phase = "head" if epoch <= n_head else "fine-tune"
        rows.append({
            "phase": phase, "epoch": epoch, "train_loss": 1 / epoch, "train_acc": 1 - 0.5 / epoch,
            "val_loss": 1.2 / epoch + 0.02 * epoch, "val_acc": 0.9 - 0.4 / epoch,
            "lr": 1e-3 if phase == "head" else 1e-5, "seconds": 0.5,
        })  # fmt: skip
    return rows


def test_plot_curves_two_phases_with_gaps_and_missing_values():
    history = two_phase_history()
    history[2]["val_acc"] = None
    history[3]["val_loss"] = math.nan
    del history[4]["lr"]
    open_png(plot_curves(history))
    open_png(plot_curves(history, unfreeze_epoch=6))


def test_plot_curves_one_phase_no_validation_and_empty():
    rows = [{"phase": "head", "epoch": 1, "train_loss": 0.9, "train_acc": 0.5}]
    open_png(plot_curves(rows))
    open_png(plot_curves([]))


def test_plot_confusion_hostile_names_absent_class_and_raw_counts():
    k = len(HOSTILE)
    cm = np.arange(k * k).reshape(k, k)
    cm[2] = 0  # a class absent from the labels
    open_png(plot_confusion(cm.tolist(), HOSTILE))
    open_png(plot_confusion(cm.tolist(), HOSTILE, normalize=False))


@pytest.mark.parametrize("k", [1, 2, 80])
def test_plot_confusion_sizes(k):
    image = open_png(
        plot_confusion(np.eye(k, dtype=int).tolist(), [f"class {i}" for i in range(k)])
    )
    assert image.width <= 2200


def test_plot_confusion_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="3x3"):
        plot_confusion([[1, 0], [0, 1]], ["a", "b", "c"])


def test_plot_mistakes_mixed_image_modes():
    images = [
        Image.new("RGB", (16, 16), "red"),
        Image.new("L", (300, 120), 200),
        Image.new("RGBA", (8, 8), (0, 0, 255, 128)),
        Image.new("P", (20, 20)),
        Image.new("I;16", (12, 12)),
        Image.new("1", (10, 10)),
        Image.new("RGB", (9, 31), "green"),
    ]
    n = len(images)
    png = plot_mistakes(images, [*HOSTILE, "a", "b"], ["b"] * n, np.linspace(0.9, 0.5, n).tolist())
    open_png(png)


def test_plot_mistakes_empty_and_mismatched():
    open_png(plot_mistakes([], [], [], []))
    with pytest.raises(InputError, match="one caption per image"):
        plot_mistakes([Image.new("RGB", (8, 8))], ["a"], [], [0.5])


def test_plot_per_class_with_absent_class():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    metrics = compute_metrics(probs, np.array([0, 1, 1]), HOSTILE[:3])
    open_png(plot_per_class(metrics))


def test_plot_mistakes_draws_each_image_in_its_cell():
    colors = ["red", "lime", "blue"]
    images = [Image.new("RGB", (10, 10), c) for c in colors]
    image = open_png(plot_mistakes(images, ["a"] * 3, ["b"] * 3, [0.9, 0.8, 0.7]))
    assert image.mode == "RGB" and image.size == (3 * 230, 270)
    pixels = np.asarray(image)
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        cell = pixels[100:200, i * 230 + 20 : i * 230 + 210].reshape(-1, 3)
        assert (cell == rgb).all(axis=1).mean() > 0.95  # scaled up to fill the cell
