"""Cross-validated accuracies of the two simplest classifiers on frozen features."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import InputError
from ._common import check_xy, single_threaded, stratified_folds


def knn_accuracy(
    features: np.ndarray, labels: np.ndarray, *, k: int = 5, folds: int = 5, seed: int = 0
) -> float:
    """Cross-validated accuracy of a cosine k-nearest-neighbour classifier.

    Cosine, because pretrained features carry class information in their direction
    more than in their norm. Each example is predicted once, by a model that did not
    see it (stratified folds; fewer folds when the smallest class is too small).

    Example:
        >>> y = np.repeat([0, 1], 10)
        >>> x = np.stack([1 - y, y], axis=1) + 0.1
        >>> knn_accuracy(x, y, k=3)
        1.0
    """
    x, codes, _ = check_xy(features, labels)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    splitter = stratified_folds(codes, folds, seed)
    # On unit vectors Euclidean distance orders neighbours exactly as cosine does.
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    smallest_train = len(codes) - max(len(test) for _, test in splitter.split(x, codes))
    clf = KNeighborsClassifier(n_neighbors=min(k, smallest_train), algorithm="brute")
    with single_threaded():
        predicted = cross_val_predict(clf, x, codes, cv=splitter)
    return float(np.mean(predicted == codes))


def linear_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0, C: float = 1.0
) -> float:
    """Cross-validated accuracy of logistic regression on standardised features.

    This is the feature-extraction strategy in miniature (frozen base, linear head),
    so it predicts what that strategy can reach. Standardising makes ``C`` mean the
    same for every backbone and cut. Convergence warnings are silenced: a probe a few
    iterations short of its optimum still ranks features correctly.
    """
    x, codes, _ = check_xy(features, labels)
    if C <= 0:
        raise InputError(f"C must be positive, got {C}")
    splitter = stratified_folds(codes, folds, seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300))
    with warnings.catch_warnings(), single_threaded():
        warnings.simplefilter("ignore", ConvergenceWarning)
        predicted = cross_val_predict(clf, x, codes, cv=splitter)
    return float(np.mean(predicted == codes))
