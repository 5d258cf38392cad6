"""LogME: the evidence of a Bayesian linear model on the features, checked against
brute-force maximisation, and its behaviour at the edges (degenerate, wide, any
label type, bad input)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from helpers import blobs
from transferkit import InputError
from transferkit.transferability import logme


def log_evidence_direct(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha): the Bayesian linear model's evidence written
    as the marginal Gaussian, independently of the SVD route under test."""
    n = len(y)
    cov = np.eye(n) / math.exp(log_beta) + f @ f.T / math.exp(log_alpha)
    chol = np.linalg.cholesky(cov)
    w = np.linalg.solve(chol, y)
    return -0.5 * (w @ w) - np.log(np.diag(chol)).sum() - n / 2 * math.log(2 * math.pi)


def logme_direct(f: np.ndarray, labels: np.ndarray) -> float:
    """LogME by brute force: scipy maximises each class's evidence over log alpha, log beta."""
    per_class = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        result = minimize(
            lambda p, y=y: -log_evidence_direct(f, y, *p),
            x0=[0.0, 0.0],
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
        )
        assert result.success, result.message
        per_class.append(-result.fun / len(y))
    return float(np.mean(per_class))


@pytest.mark.parametrize(
    "n, d, noise, degenerate",
    [
        (60, 5, 1.0, False),
        (40, 12, 0.5, False),
        (25, 3, 3.0, False),
        (40, 6, 1.0, True),  # rank-deficient: repeated and all-zero feature columns
        (20, 30, 1.0, False),
        (12, 40, 0.5, False),
    ],  # more features than examples
)
def test_logme_matches_direct_evidence_maximisation(n, d, noise, degenerate):
    rng = np.random.default_rng(n + d)
    f = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)  # unequal feature scales
    if degenerate:
        f = np.hstack([f, 2 * f[:, :3], np.zeros((n, 2))])
    labels = np.argmax(
        f @ rng.normal(size=(f.shape[1], 3)) + noise * rng.normal(size=(n, 3)), axis=1
    )
    expected = logme_direct(f, labels)
    assert logme(f, labels) == pytest.approx(expected, rel=1e-4)


def test_logme_prefers_separable_labels_to_shuffled_ones():
    x, y = blobs()
    shuffled = np.random.default_rng(1).permutation(y)
    assert logme(x, y) > logme(x, shuffled) + 0.1


def test_logme_is_finite_with_more_features_than_examples():
    # N <= D lets the model fit every target exactly: the fixed point runs off to
    # alpha or beta = infinity while the evidence converges; it must stay finite.
    rng = np.random.default_rng(0)
    value = logme(rng.normal(size=(15, 30)), rng.integers(0, 3, 15))
    assert math.isfinite(value)


def test_logme_of_all_zero_features_is_the_noise_only_model():
    # No weights can help, so y ~ N(0, I/beta) with beta = N/|y|^2 (here 2 for 0/1
    # targets split in halves): dead channels at a low cut must not give NaN.
    y = np.repeat([0, 1], 10)
    expected = 0.5 * math.log(2) - 0.5 * math.log(2 * math.pi) - 0.5
    assert logme(np.zeros((20, 3)), y) == pytest.approx(expected, rel=1e-9)


def test_logme_accepts_any_label_type():
    x, y = blobs(n_per_class=10, n_classes=3)
    names = np.array(["cat", "dog", "eel"])[y]
    assert logme(x, names) == pytest.approx(logme(x, y))


@pytest.mark.parametrize(
    "features, labels, message",
    [
        (np.zeros(10), np.zeros(10), "(N, D)"),
        (np.zeros((10, 2)), np.zeros(9), "one label per row"),
        (np.zeros((10, 2)), np.zeros(10), "at least 2 classes"),
        (np.full((4, 2), np.nan), np.array([0, 0, 1, 1]), "NaN"),
    ],
)
def test_bad_inputs_raise_input_error(features, labels, message):
    with pytest.raises(InputError, match=message):
        logme(features, labels)
