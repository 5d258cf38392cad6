"""Reading training-history rows: numeric series with gaps, and where the phase changed.

A history is a list of per-epoch rows as the engine records them::

    {"phase": "head" | "fine-tune", "epoch": 3, "train_loss": 0.41, "train_acc": 0.88,
     "val_loss": 0.52, "val_acc": 0.84, "lr": 1e-3, "seconds": 2.1}

Epochs are global and 1-based (fine-tune epochs continue the head's numbering). Any value
may be missing, ``None`` or NaN (no validation set, an epoch that was skipped), so every
reader here turns "missing" into NaN once, and the metric and plot code never has to ask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

HEAD_PHASE = "head"
FINE_TUNE_PHASE = "fine-tune"


def as_float(value: object) -> float:
    """``value`` as a float, or NaN when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def history_series(history: Sequence[Mapping], key: str) -> np.ndarray:
    """One column of the history as a float array, NaN where the value is missing."""
    return np.array([as_float(row.get(key)) for row in history], dtype=float)


def history_epochs(history: Sequence[Mapping]) -> np.ndarray:
    """The epoch of each row; a row without one gets its 1-based position.

    Why a fallback: a hand-made or truncated history should still plot, in order.
    """
    epochs = history_series(history, "epoch")
    position = np.arange(1, len(history) + 1, dtype=float)
    return np.where(np.isnan(epochs), position, epochs)


def phase_of(row: Mapping) -> str:
    """The row's phase name (``"head"`` when not recorded: a one-phase run trains a head)."""
    phase = row.get("phase")
    return str(phase) if phase else HEAD_PHASE


def phase_change_epoch(history: Sequence[Mapping]) -> int | None:
    """The first epoch trained in a new phase (the unfreeze point), or None.

    Example:
        >>> rows = [{"phase": "head", "epoch": 1}, {"phase": "head", "epoch": 2},
        ...         {"phase": "fine-tune", "epoch": 3}]
        >>> phase_change_epoch(rows)
        3
    """
    epochs = history_epochs(history)
    for i in range(1, len(history)):
        if phase_of(history[i]) != phase_of(history[i - 1]):
            return int(epochs[i])
    return None


def phase_seconds(history: Sequence[Mapping]) -> dict[str, tuple[int, float]]:
    """Per phase, in order of appearance: (number of epochs, total seconds recorded)."""
    out: dict[str, tuple[int, float]] = {}
    for row in history:
        n, total = out.get(phase_of(row), (0, 0.0))
        seconds = as_float(row.get("seconds"))
        out[phase_of(row)] = (n + 1, total + (0.0 if math.isnan(seconds) else seconds))
    return out
