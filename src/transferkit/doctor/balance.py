"""Class balance and per-class difficulty.

Per class: its images in each split, and, from the out-of-fold probabilities, how
hard it is: ``difficulty`` is the share of its images that the cross-validated head
gets wrong, ``confidence`` the mean probability given to the class on its own
images. ``imbalance`` is the largest class's count over the smallest's.
"""

from __future__ import annotations

import numpy as np


def class_table(classes, items, probs: np.ndarray | None, y: np.ndarray) -> dict:
    """``{class: {counts: {train, val, test, total}, difficulty, confidence}}``."""
    table = {}
    for c, name in enumerate(classes):
        counts = {s: sum(1 for it in items if it.label == c and it.split == s) for s in SPLITS}
        counts["total"] = sum(counts.values())
        row = {"counts": counts, "difficulty": None, "confidence": None}
        mine = y == c
        if probs is not None and mine.any():
            row["difficulty"] = round(float((probs[mine].argmax(1) != c).mean()), 4)
            row["confidence"] = round(float(probs[mine, c].mean()), 4)
        table[name] = row
    return table


def imbalance(table: dict) -> float | None:
    totals = [row["counts"]["total"] for row in table.values()]
    if not totals or min(totals) == 0:
        return None
    return round(max(totals) / min(totals), 3)


SPLITS = ("train", "val", "test")
