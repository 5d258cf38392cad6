"""Ranking backbones for a dataset before training any of them (``transferkit rank``).

Each backbone runs once over (a sample of) the training images; the scores are
LogME, k-NN and cross-validated linear-probe accuracy at its top cut, plus BN
similarity. Where the data have a test split, each backbone's *measured* linear-probe
test accuracy is computed too, and the Kendall rank correlation between every score
and that accuracy says how far each score can be trusted to pick a backbone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import kendalltau
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ._common import single_threaded

SCORE_KEYS = ("logme", "knn_accuracy", "linear_probe_accuracy", "bn_similarity")


@dataclass
class BackboneScore:
    backbone: str
    cut: str
    num_features: int
    image_size: int
    scores: dict = field(default_factory=dict)
    test_probe_accuracy: float | None = None
    seconds: float = 0.0


@dataclass
class Ranking:
    ranked: list[BackboneScore]
    ranked_by: str
    kendall_tau: dict = field(default_factory=dict)  # score -> tau vs test probe accuracy

    def to_dict(self) -> dict:
        return {
            "ranked_by": self.ranked_by,
            "kendall_tau": self.kendall_tau,
            "backbones": [asdict(b) for b in self.ranked],
        }


def test_probe_accuracy(train_x, train_y, test_x, test_y, C: float = 1.0) -> float:
    """Fit the linear probe on all training features, score it on the test split."""
    with single_threaded():
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(train_x, train_y)
        return float(model.score(test_x, test_y))


def kendall_taus(rows: list[BackboneScore]) -> dict:
    """Kendall's tau between each score and the measured test probe accuracy."""
    truth = [r.test_probe_accuracy for r in rows]
    if len(rows) < 2 or any(t is None for t in truth):
        return {}
    out = {}
    for key in SCORE_KEYS:
        values = [r.scores.get(key) for r in rows]
        if any(v is None or not math.isfinite(v) for v in values):
            continue
        tau = kendalltau(values, truth).statistic
        out[key] = None if not math.isfinite(tau) else float(tau)
    return out


def rank(entries: list[BackboneScore], by: str = "linear_probe_accuracy") -> Ranking:
    if by not in SCORE_KEYS:
        from ..errors import InputError

        raise InputError(f"cannot rank by {by!r}; choose one of {', '.join(SCORE_KEYS)}")
    ordered = sorted(entries, key=lambda r: -(r.scores.get(by) or -np.inf))
    return Ranking(ordered, by, kendall_taus(entries))
