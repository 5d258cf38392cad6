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


def saved_epoch(
    history: Sequence[Mapping], phases: Sequence[Mapping] | None
) -> tuple[int, str] | None:
    """The epoch whose weights the run saved, and its phase, from metrics.json's phases.

    Each phase ends on its best epoch's weights (early stopping restores them), and a
    phase whose ``best_epoch`` is 0 never beat the weights it started with: fine-tuning
    starts from the head's best and keeps it when no epoch does better on validation.
    So the saved weights are those of the last phase that improved, at its best epoch.
    Epochs are global, numbered across phases as the history numbers them.

    Returns None when no phase is recorded or none improved.

    Example:
        >>> phases = [{"name": "head", "epochs_run": 5, "best_epoch": 3},
        ...           {"name": "fine-tune", "epochs_run": 2, "best_epoch": 0}]
        >>> saved_epoch([], phases)
        (3, 'head')
    """
    found, offset = None, 0
    for phase in phases or []:
        if not isinstance(phase, Mapping):
            continue
        name, best = str(phase.get("name") or HEAD_PHASE), as_float(phase.get("best_epoch"))
        if best >= 1:
            found = (_global_epoch(history, name, int(best), offset), name)
        run = as_float(phase.get("epochs_run"))
        offset += 0 if math.isnan(run) else int(run)
    return found


def _global_epoch(history: Sequence[Mapping], phase: str, phase_epoch: int, offset: int) -> int:
    """The history's epoch number of ``phase``'s ``phase_epoch``-th epoch (the phases'
    epoch counts before it, when the history does not record phase epochs)."""
    for row in history:
        if phase_of(row) == phase and as_float(row.get("phase_epoch")) == phase_epoch:
            epoch = as_float(row.get("epoch"))
            if not math.isnan(epoch):
                return int(epoch)
    return offset + phase_epoch
