"""Split-conformal prediction sets: every class the model cannot rule out.

Score of a held-out image (LAC, "least ambiguous set-valued classifier"): one minus
the calibrated probability of its true class. With ``n`` held-out scores and a wanted
coverage ``1 - alpha``, the threshold ``q`` is the ``ceil((n + 1)(1 - alpha))``-th
smallest of them; a new image's set holds every class whose probability is at least
``1 - q``. If the held-out images and the new one are exchangeable (drawn the same
way, in any order), the set holds the true class with probability at least
``1 - alpha`` (and, for continuous scores, at most ``1 - alpha + 1/(n + 1)``),
averaged over images: marginal coverage, not per image or per class.

Why LAC rather than APS: among sets with the guarantee it gives the smallest ones on
average; APS's adaptive sets are larger. An empty LAC set (no class probable enough)
gets the most probable class: coverage can only rise.

Example:
    >>> import numpy as np
    >>> q = conformal_quantile(np.linspace(0, 1, 99), 0.9)
    >>> prediction_sets(np.array([[0.5, 0.45, 0.05]]), q)
    [[0, 1]]
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_COVERAGE = 0.9


def nonconformity(probabilities, labels) -> np.ndarray:
    """LAC scores of labelled images: ``1 - p(true class)``."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return np.zeros(0)
    return 1.0 - probs[np.arange(len(labels)), labels]


def finite_sample_rank(n: int, level: float) -> int:
    """The rank ``ceil((n + 1) * level)`` of the finite-sample corrected quantile
    (``n + 1`` when it exceeds ``n``: no held-out score is high enough)."""
    return min(math.ceil((n + 1) * level - 1e-12), n + 1)


def conformal_quantile(scores, coverage: float) -> float:
    """The threshold on held-out LAC ``scores`` for ``coverage``; ``inf`` (every
    class in every set) when there are too few scores for it (fewer than
    ``1 / (1 - coverage) - 1``)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = finite_sample_rank(len(s), coverage)
    return math.inf if k > len(s) else float(s[k - 1])


def prediction_sets(probabilities, quantile: float) -> list[list[int]]:
    """Per image, the class indices with ``p >= 1 - quantile``, most probable first
    (the most probable class always, so no set is empty)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    sets = []
    for row in probs:
        order = np.argsort(-row, kind="stable")
        keep = [int(j) for j in order if row[j] >= 1.0 - quantile - 1e-12]
        sets.append(keep or [int(order[0])])
    return sets


def set_metrics(probabilities, labels, quantile: float) -> dict:
    """``coverage`` (share of images whose set holds their class) and
    ``mean_set_size`` of the sets at ``quantile``."""
    labels = np.asarray(labels, dtype=np.int64)
    sets = prediction_sets(probabilities, quantile)
    if not sets:
        return {"coverage": None, "mean_set_size": None}
    hits = [int(y) in s for s, y in zip(sets, labels, strict=True)]
    return {
        "coverage": float(np.mean(hits)),
        "mean_set_size": float(np.mean([len(s) for s in sets])),
    }


def check_coverage(value, option: str = "--coverage") -> float:
    """``value`` if it is a coverage in (0, 1); else an :class:`InputError`."""
    from ..errors import InputError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InputError(
            f"{option} {value!r}: a coverage is a fraction between 0 and 1 (e.g. 0.9 for "
            "sets that hold the true class 90% of the time)"
        )
    return float(value)
