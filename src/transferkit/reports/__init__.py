"""Reports: pure metric functions, PNG plots and the self-contained HTML report.

Metrics (``metrics``) are pure: arrays in, dataclasses out. Renderers (``plots``,
``html``) turn those and a run's records into PNG bytes and one HTML page.
"""

from .html import ReportContent, render_report, write_report
from .metrics import (
    ClassMetrics,
    Metrics,
    compute_metrics,
    expected_calibration_error,
    most_confident_mistakes,
    overfitting_gap,
)
from .plots import plot_confusion, plot_curves, plot_mistakes, plot_per_class

__all__ = [
    "ClassMetrics",
    "Metrics",
    "ReportContent",
    "compute_metrics",
    "expected_calibration_error",
    "most_confident_mistakes",
    "overfitting_gap",
    "plot_confusion",
    "plot_curves",
    "plot_mistakes",
    "plot_per_class",
    "render_report",
    "write_report",
]
