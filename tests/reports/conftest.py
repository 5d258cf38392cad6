"""Fixtures for the report tests: a report with every section and hostile strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.reports import compute_metrics

EVIL = "<script>alert(1)</script>"
EVIL_IMG = '<img src=x onerror="alert(2)">'
CLASSES = [EVIL, "cats & dogs", 'say "hi"', "猫 ünïcødé", EVIL_IMG]


@pytest.fixture
def report_inputs() -> dict:
    """Every section filled, with hostile strings wherever the user controls text."""
    rng = np.random.default_rng(0)
    k, n = len(CLASSES), 60
    labels = rng.integers(0, k - 1, n)  # the last class is absent from the labels
    probs = rng.dirichlet(np.ones(k), size=n)
    metrics = compute_metrics(probs, labels, CLASSES)
    history = [
        {"phase": "head" if e <= 3 else "fine-tune", "epoch": e, "train_loss": 1 / e,
         "train_acc": 1 - 0.4 / e, "val_loss": 1.1 / e + 0.05 * e, "val_acc": 0.8 - 0.3 / e,
         "lr": 1e-3 if e <= 3 else 1e-5, "seconds": 0.7}
        for e in range(1, 7)
    ]  # fmt: skip
    mistakes = [
        {
            "image": Image.new("RGB", (12, 12), (40 * i, 90, 160)),
            "true": CLASSES[i % k],
            "pred": CLASSES[(i + 1) % k],
            "confidence": 0.9 - 0.1 * i,
            "path": f"train/{EVIL}/{i}&.png",
        }
        for i in range(4)
    ]
    mistakes.append({"image": None, "true": "a", "pred": "b", "confidence": 0.3, "path": None})
    return {
        "title": f"run {EVIL}",
        "metrics": metrics,
        "history": history,
        "data_report": {
            "usable": 60,
            "unusable": [{"path": f"x/{EVIL_IMG}.png", "reason": "truncated & unreadable"}],
            "class_counts": {c: 12 for c in CLASSES},
            "duplicates": [f"dup{i}.png" for i in range(120)],
        },
        "decision": {
            "strategy": "feature-extract",
            "reason": f"small & similar {EVIL}",
            "scores": {"logme": {"blocks.4": 1.5}},
        },
        "timings": {"features": 3.2, "head": 75.0, EVIL: 1.0},
        "config": {"backbone": "efficientnet_lite0", "classes": CLASSES, "path": Path("/tmp/x")},
        "mistakes": mistakes,
        "unfreeze_epoch": None,
    }
