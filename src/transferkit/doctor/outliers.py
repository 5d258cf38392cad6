"""Outliers: images far from every class.

Each image's cosine distance (on unit-length features) to the nearest class centre;
its score is how many robust standard deviations that is above the typical
distance of that class's own images to its centre (their median and MAD), so a
class that is naturally spread out does not flag its ordinary images. A score
above :data:`CUTOFF` is an outlier: a picture unlike any class (a screenshot in a
set of flowers, a blank frame), reported with the class it is closest to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CUTOFF = 4.0


@dataclass
class Outlier:
    index: int
    score: float
    nearest_class: int


def class_centres(unit: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    centres = np.zeros((num_classes, unit.shape[1]), unit.dtype)
    for c in range(num_classes):
        if (y == c).any():
            m = unit[y == c].mean(0)
            centres[c] = m / max(float(np.linalg.norm(m)), 1e-12)
    return centres


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def outliers(x: np.ndarray, y: np.ndarray, num_classes: int) -> list[Outlier]:
    """The outliers among rows of ``x`` (labels ``y``), most remote first."""
    if len(y) < 3:
        return []
    unit = unit_rows(x.astype(np.float64))
    distance = 1.0 - unit @ class_centres(unit, y, num_classes).T
    nearest = distance.argmin(1)
    d = distance.min(1)
    own = distance[np.arange(len(y)), y]
    median = np.zeros(num_classes)
    spread = np.ones(num_classes)
    for c in range(num_classes):
        if (y == c).any():
            median[c] = np.median(own[y == c])
            spread[c] = max(1.4826 * float(np.median(np.abs(own[y == c] - median[c]))), 1e-9)
    score = (d - median[nearest]) / spread[nearest]
    found = [
        Outlier(int(i), float(score[i]), int(nearest[i])) for i in np.nonzero(score > CUTOFF)[0]
    ]
    return sorted(found, key=lambda o: (-o.score, o.index))
