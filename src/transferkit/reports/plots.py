"""The report's figures, each returned as PNG bytes.

Why bytes and matplotlib's object API (``Figure`` + the Agg canvas, never ``pyplot``):
the HTML report embeds the images directly, the CLI may also write them beside it, and
neither should depend on (or change) the global backend or leak open figures in a
long-running process. Text that comes from the user (class names) is drawn with
``parse_math=False``, so a name like ``$5 & $10`` is not read as TeX.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image

from ..data.images import to_channels
from ..errors import InputError
from .history import history_epochs, history_series, phase_change_epoch
from .metrics import Metrics, confidence_bins
from .overfitting import overfitting_gap

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
LR_COLOR = "#2ca02c"
MARK_COLOR = "#555555"
DPI = 100
THUMBNAIL_PX = 128  # mistakes grid: enough to recognise the image, small enough to embed
ANNOTATE_MAX_CLASSES = 20  # beyond this, per-cell numbers are unreadable
TICKS_MAX_CLASSES = 60
MISTAKE_CELL = (230, 270)  # mistakes grid: pixels per image, caption included
MISTAKE_TITLE_PX = 36  # room for the grid's title
MISTAKE_CAPTION_PX = 34  # two caption lines above each image


def plot_curves(
    history: Sequence[Mapping],
    *,
    unfreeze_epoch: int | None = None,
    best_epoch: int | None = None,
) -> bytes:
    """Loss, accuracy and learning rate per epoch, train vs validation, both phases.

    Args:
        history: per-epoch rows (see ``reports.history``); missing values leave gaps.
        unfreeze_epoch: the first epoch trained with the base unfrozen. A dashed line
            marks it, between that epoch and the one before. When None, it is taken from
            where the rows' ``phase`` changes (no line for a one-phase run).
        best_epoch: the epoch whose weights were saved (``reports.history.saved_epoch``),
            starred as "saved weights"; when None, the best validation epoch is starred.

    The star makes "when validation stopped improving" visible at a glance: the report
    watches for overfitting.
    """
    fig = Figure(figsize=(13, 3.9), dpi=DPI, layout="constrained")
    if not history:
        _message(fig, "No training history was recorded.")
        return _png(fig)
    epochs = history_epochs(history)
    if unfreeze_epoch is None:
        unfreeze_epoch = phase_change_epoch(history)
    label = "saved weights" if best_epoch is not None else "best val"
    if best_epoch is None:
        best_epoch = overfitting_gap(history)["best_epoch"]
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    marker = "o" if len(history) <= 40 else None
    for ax, kind, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        _plot_train_val(ax, epochs, history, kind, marker)
        ax.set_title(title)
        ax.set_ylabel(title.lower())
        if best_epoch is not None:
            values = history_series(history, f"val_{kind}")
            _star_best(ax, epochs, values, best_epoch, label)
    ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    _plot_lr(ax_lr, epochs, history_series(history, "lr"), marker)
    for ax in (ax_loss, ax_acc, ax_lr):
        _epoch_axis(ax, unfreeze_epoch, float(epochs.max()))
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    return _png(fig)


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], *, normalize: bool = True
) -> bytes:
    """The confusion matrix as a heat map; rows are true classes, columns predictions.

    With ``normalize`` each row is divided by its total, so the diagonal reads as
    per-class recall and small classes are as visible as large ones; cells still show
    the raw count. Rows of classes absent from the labels stay empty.
    """
    cm = np.asarray(confusion, dtype=float)
    n = len(classes)
    if cm.shape != (n, n):
        raise InputError(f"confusion must be {n}x{n} for {n} classes, got shape {cm.shape}")
    totals = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0) if normalize else cm
    vmax = 1.0 if normalize else max(float(cm.max()), 1.0)
    side = float(np.clip(2.8 + 0.5 * n, 4.5, 18))
    fig = Figure(figsize=(side + 1.2, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, shrink=0.8)
    cbar.set_label("fraction of the true class" if normalize else "count")
    if normalize:
        cbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    if n <= ANNOTATE_MAX_CLASSES:
        _annotate_cells(ax, shown, cm, totals, vmax, normalize)
    if n <= TICKS_MAX_CLASSES:
        names = [_short(c) for c in classes]
        ax.set_xticks(range(n), names, rotation=45, ha="right", parse_math=False)
        ax.set_yticks(range(n), names, parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        "Confusion matrix" + (" (rows normalised: diagonal = recall)" if normalize else "")
    )
    return _png(fig)


def plot_mistakes(
    images: Sequence[Image.Image], true: Sequence[str], pred: Sequence[str], conf: Sequence[float]
) -> bytes:
    """A grid of misclassified images captioned with true class, prediction and confidence.

    Why pasted pixels (``figimage``) and figure text, not one ``Axes`` per image: axes
    that show no axis still build ticks and spines and enter the layout, which made
    this grid cost more than the other three plots together. Each thumbnail is scaled
    here with nearest-neighbour (as ``imshow(interpolation="nearest")`` would show it),
    so the picture is the same grid at a fraction of the cost.
    """
    n = len(images)
    if not len(true) == len(pred) == len(conf) == n:
        raise InputError(
            f"plot_mistakes needs one caption per image: {n} images, {len(true)} true, "
            f"{len(pred)} pred, {len(conf)} confidences"
        )
    if n == 0:
        fig = Figure(figsize=(5, 1.5), dpi=DPI)
        _message(fig, "No mistakes to show.")
        return _png(fig)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    width, height = MISTAKE_CELL[0] * cols, MISTAKE_CELL[1] * rows  # pixels
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.suptitle("Most confident mistakes", y=1 - 8 / height, va="top")
    row_h = (height - MISTAKE_TITLE_PX) / rows
    box_w, box_h = MISTAKE_CELL[0] - 8, row_h - MISTAKE_CAPTION_PX - 6
    for k, (img, t, p, c) in enumerate(zip(images, true, pred, conf, strict=True)):
        r, col = divmod(k, cols)
        # RGB as the figure shows it: pasted pixels bypass a colour map and alpha
        shown = _fit(to_channels(thumbnail(img), 3), box_w, box_h)
        x = col * MISTAKE_CELL[0] + (MISTAKE_CELL[0] - shown.width) / 2
        top = height - MISTAKE_TITLE_PX - r * row_h - MISTAKE_CAPTION_PX  # from the bottom
        fig.figimage(np.asarray(shown), xo=round(x), yo=round(top - shown.height), origin="upper")
        caption = f"true: {_short(t, 16)}\npred: {_short(p, 16)} ({float(c):.0%})"
        x_mid = (col + 0.5) * MISTAKE_CELL[0] / width
        style = {"fontsize": 8.5, "color": "#8b0000", "parse_math": False}
        fig.text(x_mid, (top + 4) / height, caption, ha="center", va="bottom", **style)
    return _png(fig)


def plot_per_class(metrics: Metrics) -> bytes:
    """F1 per class as horizontal bars, worst first, with precision/recall and support.

    Why worst first: the classes that need more data or cleaner labels are the point.
    """
    rows = sorted(metrics.per_class, key=lambda c: (c.f1, c.name))
    n = len(rows)
    fig = Figure(
        figsize=(8, float(np.clip(1.2 + 0.32 * n, 2.5, 30))), dpi=DPI, layout="constrained"
    )
    ax = fig.subplots()
    y = np.arange(n)
    ax.barh(y, [c.f1 for c in rows], color=TRAIN_COLOR, alpha=0.8, label="F1")
    ax.scatter(
        [c.precision for c in rows],
        y,
        marker="|",
        s=120,
        color="black",
        label="precision",
        zorder=3,
    )
    ax.scatter(
        [c.recall for c in rows], y, marker="x", s=30, color=VAL_COLOR, label="recall", zorder=3
    )
    for yi, c in zip(y, rows, strict=True):
        note = f"F1 {c.f1:.2f}  n={c.support}" if c.support else "absent from labels"
        ax.text(1.02, yi, note, va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_yticks(y, [_short(c.name) for c in rows], parse_math=False)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title("Per-class F1 (worst first)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return _png(fig)


def plot_reliability(before: np.ndarray | None, after: np.ndarray, labels: np.ndarray) -> bytes:
    """Reliability diagram: accuracy against confidence per bin, before and after
    temperature scaling (``before=None``: no temperature, one curve of the model's
    own probabilities); on the diagonal, "90% sure" is right 90% of the time."""
    fig = Figure(figsize=(5.5, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    series = [(before, VAL_COLOR, "before calibration"), (after, TRAIN_COLOR, "after calibration")]
    if before is None:
        series = [(after, TRAIN_COLOR, "the model's probabilities")]
    for probs, color, name in series:
        rows = confidence_bins(probs, labels)
        conf, acc, n = (np.array(c) for c in zip(*rows, strict=True))
        sizes = 12 + 120 * n / n.max()
        ax.plot(conf, acc, color=color, alpha=0.6)
        ax.scatter(conf, acc, s=sizes, color=color, alpha=0.8, label=name)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability), binned")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("Reliability (marker size: images in the bin)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def thumbnail(image: Image.Image, size: int = THUMBNAIL_PX) -> Image.Image:
    """A copy no larger than ``size`` px a side, in a mode PNG and matplotlib both show."""
    img = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    img = img.copy()
    img.thumbnail((size, size))
    return img


def _fit(image: Image.Image, width: float, height: float) -> Image.Image:
    """``image`` scaled (nearest neighbour, aspect kept) to fill a ``width`` x ``height``
    box."""
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.NEAREST)


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG (for embedding a thumbnail in the HTML report)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _plot_train_val(
    ax, epochs: np.ndarray, history: Sequence[Mapping], kind: str, marker: str | None
) -> None:
    """The train and validation curves of ``kind`` ("loss" or "acc"), where recorded."""
    for split, color, label in (("train", TRAIN_COLOR, "train"), ("val", VAL_COLOR, "validation")):
        values = history_series(history, f"{split}_{kind}")
        if not np.isnan(values).all():
            ax.plot(epochs, values, color=color, marker=marker, ms=3.5, lw=1.6, label=label)


def _epoch_axis(ax, unfreeze_epoch: int | None, last_epoch: float) -> None:
    """Integer epochs along x, a light grid, and the unfreeze mark when there is one."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if unfreeze_epoch is not None:
        _mark_unfreeze(ax, unfreeze_epoch, last_epoch)


def _annotate_cells(
    ax, shown: np.ndarray, cm: np.ndarray, totals: np.ndarray, vmax: float, normalize: bool
) -> None:
    """Write each confusion cell's share of its row (when normalised) and its count."""
    n = len(cm)
    for i, j in np.ndindex(n, n):
        text = f"{shown[i, j]:.0%}\n{int(cm[i, j])}" if normalize else f"{int(cm[i, j])}"
        if totals[i, 0] == 0:
            text = "–"  # no examples of this class: 0% would read as "never right"
        color = "white" if shown[i, j] > 0.55 * vmax else "black"
        size = 9 if n <= 8 else 7
        # Inside the axes: leaving them out of the layout changes nothing but its cost.
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=size, in_layout=False)


def _plot_lr(ax, epochs: np.ndarray, lr: np.ndarray, marker: str | None) -> None:
    ax.set_title("Learning rate")
    ax.set_ylabel("learning rate")
    if (lr > 0).any():
        ax.plot(epochs, np.where(lr > 0, lr, np.nan), color=LR_COLOR, marker=marker, ms=3.5, lw=1.6)
        ax.set_yscale("log")  # head and fine-tune rates differ by 10-100x (fine-tune gently)
    else:
        ax.text(
            0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="0.5"
        )


def _mark_unfreeze(ax, unfreeze_epoch: int, last_epoch: float) -> None:
    x = unfreeze_epoch - 0.5
    ax.axvspan(x, max(last_epoch, x) + 0.5, color="#ff7f0e", alpha=0.07, lw=0)
    ax.axvline(x, color=MARK_COLOR, ls="--", lw=1.2)
    ax.text(x, 0.98, f" unfreeze (epoch {unfreeze_epoch})", transform=ax.get_xaxis_transform(),
            rotation=90, ha="right", va="top", fontsize=8, color=MARK_COLOR)  # fmt: skip


def _star_best(ax, epochs: np.ndarray, values: np.ndarray, best_epoch: int, label: str) -> None:
    at = np.flatnonzero(epochs == best_epoch)
    if at.size and not np.isnan(values[at[0]]):
        label = f"{label} (epoch {best_epoch})"
        ax.plot([best_epoch], [values[at[0]]], marker="*", ms=13, color=VAL_COLOR,
                markeredgecolor="black", ls="none", label=label, zorder=4)  # fmt: skip


def _message(fig: Figure, text: str) -> None:
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="0.3")


def _short(text: object, limit: int = 22) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _png(fig: Figure) -> bytes:
    """Draw ``fig`` once on an Agg canvas and encode its pixels as an RGB PNG.

    Why not ``savefig``: with a layout engine it draws the figure twice (a dry run to
    lay it out, then the real one); one ``canvas.draw()`` lays out and draws in a single
    pass, to the same pixels. The background is opaque white, so the alpha channel
    ``savefig`` would add carries nothing and RGB is about 10% smaller.
    """
    canvas = FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    with warnings.catch_warnings():
        # Class names in scripts the default font lacks (CJK, emoji) draw as boxes; the
        # HTML tables show them properly, so the warning is noise here.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", dpi=(DPI, DPI))
    return buf.getvalue()
