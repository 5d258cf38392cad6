"""What every score shares: input validation (one message per mistake), folds, and
single-threaded numerics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from ..errors import InputError


def check_xy(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate a (features, labels) pair.

    Returns:
        float64 features, class codes 0..K-1 (labels may be of any type), and K.
    """
    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise InputError(
            f"features must be a numeric (N, D) array, got shape {x.shape} and dtype {x.dtype}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise InputError(
            f"labels must be a 1-D array with one label per row of features "
            f"({len(x)}), got shape {y.shape}"
        )
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or infinite values")
    _, codes = np.unique(y, return_inverse=True)
    n_classes = int(codes.max()) + 1 if len(codes) else 0
    if n_classes < 2:
        raise InputError(f"transferability needs at least 2 classes, got {n_classes}")
    return x, codes.reshape(-1), n_classes


def stratified_folds(codes: np.ndarray, folds: int, seed: int) -> StratifiedKFold:
    """Shuffled stratified folds; fewer than asked when the smallest class cannot
    put one example in each, because an empty class in a test fold skews accuracy."""
    if folds < 2:
        raise InputError(f"folds must be at least 2, got {folds}")
    smallest = int(np.bincount(codes).min())
    if smallest < 2:
        raise InputError(
            "cross-validation needs at least 2 examples of every class; "
            f"the smallest class has {smallest}"
        )
    return StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run BLAS and OpenMP (scikit-learn's kNN) on one thread inside a score.

    Their worker threads spin while they wait, so on a machine whose cores are
    shared (CI, a laptop running training) they slow these small computations down
    instead of speeding them up. Measured on 2 busy cores: the linear probe on
    1,797 x 320 features 32 s with two threads vs 0.9 s with one; LogME on
    1,797 x 1,280 3.5-17 s vs 1.2 s, on 20,000 x 1,280 4.8 s vs 2.3 s; kNN on
    1,797 x 40 0.23 s with OpenMP threads vs 0.10 s without.
    """
    with threadpool_limits(limits=1):
        yield
