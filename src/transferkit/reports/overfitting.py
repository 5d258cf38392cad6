"""The overfitting check of the report: which weights were kept, and whether training
overfitted, judged so that an ordinary run does not raise a false alarm.

Training is called overfitting only when both of these hold:

- validation loss rose after its lowest point: at least ``RISE_EPOCHS`` epochs were
  recorded after it, the last one more than ``RISE_REL`` (5%) above it, while the
  training loss kept falling (the model went on fitting the training set);
- at the last epoch, training accuracy exceeds validation accuracy by more than the
  validation split's sampling noise: twice the binomial standard error of that
  validation accuracy on ``n_val`` images, and at least ``MIN_GAP`` (5 points). With
  the split's size unknown, ``gap_threshold`` (10 points) stands in.

Why both, and why the noise: a training accuracy a few points above validation is
what training looks like (the model has seen those images), and on a split of 12
images one image is 8 points, so a 17-point gap is two images. A gap alone, or a
validation loss that wobbles on a tiny split, is not evidence; a loss that climbs
for epochs while the gap grows past what chance explains is.

The epoch the report marks is the one whose weights were saved: from metrics.json's
``phases`` when given (see :func:`~transferkit.reports.history.saved_epoch`), else the
epoch with the lowest validation loss (highest validation accuracy without a loss).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .history import history_epochs, history_series, phase_of, saved_epoch
from .stats import SMALL_SPLIT, binomial_se, interval_range

RISE_EPOCHS = 3
RISE_REL = 0.05
MIN_GAP = 0.05
NOISE_SE = 2.0

_SERIES = ("train_acc", "val_acc", "train_loss", "val_loss")
_GAP_KEYS = (
    "monitor", "best_epoch", "best_phase", "best_value", "final_epoch", "epochs_since_best",
    "stopped_improving", *_SERIES, "acc_gap", "loss_gap", "loss_best_epoch", "rise_epochs",
    "rise", "gap_needed", "n_val", "val_accuracy", "from_phases", "kept_over", "overfitting",
    "sentence",
)  # fmt: skip


def overfitting_gap(
    history: Sequence[Mapping],
    *,
    gap_threshold: float = 0.10,
    phases: Sequence[Mapping] | None = None,
    n_val: int | None = None,
    val_accuracy: float | None = None,
) -> dict:
    """Say which epoch's weights were kept, and whether training overfitted.

    Args:
        history: per-epoch rows (see ``reports.history``).
        gap_threshold: the train - validation accuracy gap that counts when ``n_val``
            is unknown.
        phases: metrics.json's ``phases``; they say which epoch's weights were saved.
        n_val: validation images; the gap must beat their sampling noise.
        val_accuracy: the saved model's validation accuracy (metrics.json), quoted.

    Returns:
        A dict with ``best_epoch`` and ``best_phase`` (the saved weights' epoch),
        ``best_value`` (the monitored value there), ``monitor``, ``final_epoch``,
        ``epochs_since_best``, ``stopped_improving``, the last epoch's ``train_acc``,
        ``val_acc``, ``acc_gap`` (train - val), ``train_loss``, ``val_loss``,
        ``loss_gap``; ``loss_best_epoch`` (lowest validation loss), ``rise_epochs`` (epochs
        after it, when the loss rose; else 0) and ``rise`` (relative); ``gap_needed``;
        ``n_val``, ``val_accuracy``, ``from_phases`` (the epoch came from ``phases``),
        ``kept_over`` (later phases that never improved on the saved weights);
        ``overfitting`` and ``sentence`` (plain language, for the report). Values that
        cannot be known are None.
    """
    rows = [r for r in history if isinstance(r, Mapping)]
    out: dict = dict.fromkeys(_GAP_KEYS)
    out.update(n_val=n_val, val_accuracy=_finite_or_none(val_accuracy))
    if not rows:
        out["sentence"] = "No training history was recorded."
        return out
    epochs = history_epochs(rows)
    series = {k: history_series(rows, k) for k in _SERIES}
    out["final_epoch"] = int(epochs[-1])
    out.update(_final_gaps(series))
    out["monitor"] = _monitor(series)
    if out["monitor"] is None:
        out["sentence"] = "No validation metrics were recorded, so overfitting cannot be judged."
        return out
    out.update(_kept(rows, epochs, series, out["monitor"], phases))
    out.update(_loss_rise(epochs, series))
    out["gap_needed"] = _gap_needed(out["val_acc"], n_val, gap_threshold)
    beyond_noise = out["acc_gap"] is not None and out["acc_gap"] > out["gap_needed"]
    out["overfitting"] = bool(out["rise_epochs"] and beyond_noise)
    out["sentence"] = _sentence(out)
    return out


def _monitor(series: dict[str, np.ndarray]) -> str | None:
    """What judges the best epoch without phase records: validation loss, else accuracy."""
    if _has(series["val_loss"]):
        return "val_loss"
    return "val_acc" if _has(series["val_acc"]) else None


def _kept(rows, epochs, series, monitor: str, phases) -> dict:
    """The saved weights' epoch: from the phases when they say, else the best monitored."""
    kept = saved_epoch(rows, phases)
    if kept is not None and (epochs == kept[0]).any():
        index = int(np.flatnonzero(epochs == kept[0])[0])
    else:
        values = series[monitor]
        index = int(np.nanargmin(values) if monitor == "val_loss" else np.nanargmax(values))
        kept = None
    last = len(rows) - 1
    return {
        "best_epoch": int(epochs[index]),
        "best_phase": phase_of(rows[index]),
        "best_value": _finite_or_none(series[monitor][index]),
        "epochs_since_best": int(epochs[last] - epochs[index]),
        "stopped_improving": index < last,
        "from_phases": kept is not None,
        "kept_over": _kept_over(phases, phase_of(rows[index])) if kept else [],
    }


def _kept_over(phases: Sequence[Mapping], kept_phase: str) -> list[str]:
    """The phases after ``kept_phase`` that never beat the weights they started from."""
    names = [str(p.get("name")) for p in phases if isinstance(p, Mapping)]
    after = names[names.index(kept_phase) + 1 :] if kept_phase in names else []
    return after


def _loss_rise(epochs: np.ndarray, series: dict[str, np.ndarray]) -> dict:
    """Where validation loss was lowest, and for how many epochs after it it rose."""
    val, train = series["val_loss"], series["train_loss"]
    out = {"loss_best_epoch": None, "rise_epochs": 0, "rise": None}
    recorded = np.flatnonzero(~np.isnan(val))
    if recorded.size == 0:
        return out
    best = int(recorded[np.argmin(val[recorded])])
    last = int(recorded[-1])
    out["loss_best_epoch"] = int(epochs[best])
    after = int(np.count_nonzero(recorded > best))
    rise = float(val[last] / val[best] - 1) if val[best] > 0 else math.inf
    training_fell = not (train[last] >= train[best])  # NaN (not recorded) does not veto
    if after >= RISE_EPOCHS and rise > RISE_REL and training_fell:
        out.update(rise_epochs=after, rise=rise)
    return out


def _gap_needed(val_acc: float | None, n_val: int | None, gap_threshold: float) -> float:
    """The accuracy gap that counts: beyond twice the standard error of the validation
    accuracy on ``n_val`` images (and at least 5 points); ``gap_threshold`` unknown n."""
    se = binomial_se(val_acc, n_val) if val_acc is not None and n_val else None
    return gap_threshold if se is None else max(MIN_GAP, NOISE_SE * se)


def _final_gaps(series: dict[str, np.ndarray]) -> dict:
    """Train and val accuracy and loss, and their gaps, at the last epoch that recorded
    both values of a pair (validation may run only every few epochs)."""
    out = {}
    for kind in ("acc", "loss"):
        train, val = _last_pair(series[f"train_{kind}"], series[f"val_{kind}"])
        out[f"train_{kind}"], out[f"val_{kind}"] = _finite_or_none(train), _finite_or_none(val)
        out[f"{kind}_gap"] = _finite_or_none(train - val if kind == "acc" else val - train)
    return out


def _sentence(g: dict) -> str:
    """The call-out's text: the kept weights, the validation loss, the verdict."""
    parts = (_kept_sentence(g), _split_sentence(g), _loss_sentence(g), _verdict(g))
    return " ".join(s for s in parts if s)


def _kept_sentence(g: dict) -> str:
    if g["val_accuracy"] is None and not g["kept_over"]:
        return ""
    text = f"The saved weights are those of epoch {g['best_epoch']} ({g['best_phase']} phase)"
    if g["kept_over"]:
        later = " and ".join(f"the {name} phase" for name in g["kept_over"])
        text += f"; {later} never beat them on validation, so they were kept"
    text += "."
    if g["val_accuracy"] is not None:
        ci = interval_range(g["val_accuracy"], g["n_val"])
        text += f" Their validation accuracy is {g['val_accuracy']:.1%}"
        text += f" ({ci} on {g['n_val']:,} images)." if ci else "."
    return text


def _split_sentence(g: dict) -> str:
    if not g["n_val"] or g["n_val"] >= SMALL_SPLIT:
        return ""
    return (
        f"With only {g['n_val']} validation images, validation accuracy is a rough estimate:"
        " it cannot tell apart epochs or runs a few images apart."
    )


def _loss_sentence(g: dict) -> str:
    if g["monitor"] != "val_loss":
        what, epoch, since = "accuracy", g["best_epoch"], g["epochs_since_best"]
        phase = g["best_phase"]
    else:
        what, epoch, phase = "loss", g["loss_best_epoch"], None
        since = g["final_epoch"] - epoch
    where = f"epoch {epoch}" + (f" ({phase} phase)" if phase else "")
    text = f"Validation {what} was best at {where}"
    if g["rise_epochs"]:
        return text + (
            f" and rose {g['rise']:.0%} over the {g['rise_epochs']} epochs after it while"
            " training loss kept falling."
        )
    if since:
        epochs = f"{since} epoch{'s' if since != 1 else ''}"
        return text + f" and did not improve in the {epochs} after it."
    return text + " and was still improving at the last epoch."


def _verdict(g: dict) -> str:
    gap, needed = g["acc_gap"], g["gap_needed"]
    points = f"{100 * gap:.0f} points" if gap is not None else ""
    if g["overfitting"]:
        noise = (
            f"the sampling noise of {g['n_val']:,} validation images ({100 * needed:.0f} points)"
            if g["n_val"]
            else f"{100 * needed:.0f} points"
        )
        return (
            f"By the last epoch training accuracy was {points} above validation accuracy, more"
            f" than {noise}. The model was overfitting after epoch {g['loss_best_epoch']}: consider"
            " more data, augmentation or a more strongly regularised head."
        )
    if g["rise_epochs"] and gap is not None and g["n_val"]:
        return (
            f"The train-validation accuracy gap ({points}) is within the sampling noise of"
            f" {g['n_val']:,} validation images ({100 * needed:.0f} points), so this is no"
            " clear sign of overfitting."
        )
    if g["n_val"] and g["n_val"] < SMALL_SPLIT:
        return "No clear sign of overfitting, as far as so few validation images can show."
    return "No sign of overfitting."


def _last_pair(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    both = np.flatnonzero(~np.isnan(a) & ~np.isnan(b))
    return (float(a[both[-1]]), float(b[both[-1]])) if both.size else (math.nan, math.nan)


def _has(values: np.ndarray) -> bool:
    return bool((~np.isnan(values)).any())


def _finite_or_none(value: object) -> float | None:
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
