"""Figures of the report's "How far to trust it" section, as PNG bytes (the style of
``plots``: matplotlib's object API, no pyplot)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from .plots import DPI, MARK_COLOR, TRAIN_COLOR, _png


def plot_coverage_curve(curve: Sequence[dict], chosen: float | None = None) -> bytes:
    """Coverage of the prediction sets against their mean size, one point per
    coverage asked for (``curve``: ``{"target", "coverage", "mean_set_size"}``); the
    run's own coverage setting is ringed."""
    fig = Figure(figsize=(5.5, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    sizes = [c["mean_set_size"] for c in curve]
    achieved = [c["coverage"] for c in curve]
    ax.plot(sizes, achieved, color=TRAIN_COLOR, marker="o", label="achieved coverage")
    ax.scatter(sizes, [c["target"] for c in curve], color=MARK_COLOR, marker="_", s=120)
    ax.plot([], [], color=MARK_COLOR, marker="_", linestyle="", label="coverage asked for")
    for c in curve:
        if chosen is not None and abs(c["target"] - chosen) < 1e-9:
            ax.scatter(
                [c["mean_set_size"]], [c["coverage"]], s=220, facecolors="none",
                edgecolors="black", label=f"the run's setting ({chosen:g})",
            )  # fmt: skip
    ax.set_xlabel("mean prediction-set size (classes)")
    ax.set_ylabel("share of sets holding the true class")
    ax.set_title("Prediction sets: coverage against size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)
