"""Suspected mislabels: out-of-fold probabilities and confident-learning thresholds.

Each image is predicted by a logistic-regression head (the probe head's, on the
cached features) cross-validated so that no image is predicted by a head that saw
it. A class's threshold is the mean probability of that class over the images
labelled with it: how confident the head is, on average, about that class when it is
right. An image is suspect when another class reaches that class's own threshold
and beats the given label; ranked by how far the suggested class's probability
exceeds the given one's. Per-class thresholds, not one cut-off: a hard class whose
images get 0.6 on average is judged against 0.6, an easy one against 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PENALTIES = (0.01, 0.1, 1.0)  # C of the probe head's logistic regression


@dataclass
class OutOfFold:
    probabilities: np.ndarray | None  # (N, K); None when a class has a single image
    folds: int
    c: float | None
    accuracy: float | None


def out_of_fold(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0) -> OutOfFold:
    """Out-of-fold probabilities of the penalty (of :data:`PENALTIES`) with the best
    out-of-fold log-loss; stratified, seeded folds (as many as the smallest class
    allows, at most 5)."""
    import torch
    from sklearn.model_selection import StratifiedKFold

    from ..probe_head import _one_thread, fit_logistic_path, log_loss

    counts = np.bincount(y, minlength=num_classes)
    folds = min(5, int(counts[counts > 0].min())) if len(y) else 0
    if folds < 2:
        return OutOfFold(None, 0, None, None)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)).double(), torch.from_numpy(y).long()
    probs = np.zeros((len(PENALTIES), len(y), num_classes))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with _one_thread():
        for train, test in splitter.split(np.zeros(len(y)), y):
            path = fit_logistic_path(xt[train], yt[train], num_classes, PENALTIES)
            for k, model in enumerate(path):
                probs[k, test] = model.logits(xt[test]).softmax(1).numpy()
    losses = [log_loss(torch.from_numpy(p), yt) for p in probs]
    best = int(np.argmin(losses))
    accuracy = float((probs[best].argmax(1) == y).mean())
    return OutOfFold(probs[best], folds, PENALTIES[best], accuracy)


@dataclass
class Suspect:
    index: int
    given: int
    suggested: int
    score: float
    given_probability: float
    suggested_probability: float


def class_thresholds(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per class: the mean probability of the class over the images labelled with it."""
    k = probs.shape[1]
    return np.array([probs[y == c, c].mean() if (y == c).any() else 1.0 for c in range(k)])


def suspects(probs: np.ndarray, y: np.ndarray) -> list[Suspect]:
    """The images whose label the probabilities contradict, most suspect first."""
    thresholds = class_thresholds(probs, y)
    above = probs >= thresholds[None, :] - 1e-12
    masked = np.where(above, probs, -1.0)
    masked[np.arange(len(y)), y] = -1.0
    suggested = masked.argmax(1)
    given_p = probs[np.arange(len(y)), y]
    sugg_p = probs[np.arange(len(y)), suggested]
    flagged = (masked.max(1) >= 0) & (sugg_p > given_p)
    out = [
        Suspect(
            int(i),
            int(y[i]),
            int(suggested[i]),
            float(sugg_p[i] - given_p[i]),
            float(given_p[i]),
            float(sugg_p[i]),
        )
        for i in np.nonzero(flagged)[0]
    ]
    return sorted(out, key=lambda s: (-s.score, s.index))
