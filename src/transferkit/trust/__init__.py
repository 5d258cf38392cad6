"""How far to trust a prediction: an out-of-distribution score with an ``unknown``
threshold (``ood``), split-conformal prediction sets (``conformal``), and what a
run stores of them (``state``)."""

from .conformal import DEFAULT_COVERAGE, conformal_quantile, prediction_sets, set_metrics
from .ood import METHODS, auroc, ood_scores, threshold_for_rate
from .state import DEFAULT_UNKNOWN_RATE, NOT_RECORDED, TrustState, load_trust, save_trust

__all__ = [
    "DEFAULT_COVERAGE",
    "DEFAULT_UNKNOWN_RATE",
    "METHODS",
    "NOT_RECORDED",
    "TrustState",
    "auroc",
    "conformal_quantile",
    "load_trust",
    "ood_scores",
    "prediction_sets",
    "save_trust",
    "set_metrics",
    "threshold_for_rate",
]
