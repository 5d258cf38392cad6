"""Reports: pure metric functions, PNG plots and the self-contained HTML report.

Metrics (``metrics``) are pure: arrays in, dataclasses out. Renderers (``plots``,
``html``, ``text``) turn those and a run's records into PNG bytes, one HTML page or
terminal text; ``run_report`` builds a run's ``report.html`` from its files alone.
"""

from .html import ReportContent, render_report, write_report
from .metrics import (
    ClassMetrics,
    Metrics,
    compute_metrics,
    expected_calibration_error,
    most_confident_mistakes,
)
from .overfitting import overfitting_gap
from .plots import plot_confusion, plot_curves, plot_mistakes, plot_per_class
from .run_report import write_run_report
from .stats import wilson_interval

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
    "wilson_interval",
    "write_report",
    "write_run_report",
]
