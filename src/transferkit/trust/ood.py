"""Out-of-distribution scores: how unlike the training images an image is.

Every score here is "higher = more unusual", so one threshold rule serves all:

- ``mahalanobis``: the squared Mahalanobis distance of the image's pooled features
  (what the head sees, L2-normalised) to the nearest class mean, with one covariance
  shared by the classes (Ledoit-Wolf shrinkage: there are more feature dimensions
  than images; per dimension for features wider than 4,096);
- ``knn``: one minus the cosine similarity to the k-th nearest training image;
- ``energy``: ``-logsumexp(logits)``; ``max_logit``: ``-max(logits)``;
  ``msp``: one minus the largest softmax probability.

The run's score is ``mahalanobis``, chosen by measurement (docs/results.md, "How far
to trust it"): it needs the features, which a run's torch model gives in the same
forward pass as the logits.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(0, 1, (50, 4)) + 5, rng.normal(0, 1, (50, 4)) - 5])
    >>> y = np.repeat([0, 1], 50)
    >>> stats = fit_feature_stats(x, y, 2)
    >>> bool(ood_scores("mahalanobis", None, np.zeros((1, 4)) + 5, stats)[0] < 20)
    True
"""

from __future__ import annotations

import numpy as np

METHODS = ("mahalanobis", "knn", "energy", "max_logit", "msp")
FEATURE_METHODS = ("mahalanobis", "knn")
DEFAULT_METHOD = "mahalanobis"
KNN_K = 10
# wider features (a flattening head's) get a per-dimension variance instead of a full
# covariance: 4096 x 4096 float64 is 128 MiB, and 50,000 wide would be 20 GB
MAX_FULL_COVARIANCE = 4096


def _normalised(features) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_feature_stats(features, labels, num_classes: int, method: str = DEFAULT_METHOD) -> dict:
    """What ``method`` needs of the training images' pooled features: class means
    and the shared precision matrix (``mahalanobis``), or the normalised features
    themselves (``knn``); float32 arrays."""
    x = _normalised(features)
    labels = np.asarray(labels, dtype=np.int64)
    if method == "knn":
        return {"bank": x.astype(np.float32)}
    from sklearn.covariance import ledoit_wolf

    present = [k for k in range(num_classes) if (labels == k).any()]
    means = np.zeros((num_classes, x.shape[1]))
    for k in present:
        means[k] = x[labels == k].mean(0)
    centred = x - means[labels]
    if x.shape[1] > MAX_FULL_COVARIANCE:  # a D x D matrix would not fit: per dimension
        var = centred.var(0)
        var = 0.5 * var + 0.5 * var.mean() + 1e-12  # shrunk toward the mean variance
        return {"means": means[present].astype(np.float32), "variances": var.astype(np.float32)}
    cov, _ = ledoit_wolf(centred, assume_centered=True)
    precision = np.linalg.pinv(cov, hermitian=True)
    return {
        "means": means[present].astype(np.float32),
        "precision": precision.astype(np.float32),
    }


def ood_scores(method: str, logits, features, stats: dict | None = None) -> np.ndarray:
    """Per image, the ``method`` score (higher: more unusual). ``logits``: ``(N, K)``
    calibrated logits (for ``energy``, ``max_logit``, ``msp``); ``features``:
    pooled features and ``stats`` from :func:`fit_feature_stats` (for the others)."""
    if method in FEATURE_METHODS:
        x = _normalised(features)
        if method == "knn":
            return _knn(x, np.asarray(stats["bank"], dtype=np.float64))
        return _mahalanobis(x, stats)
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[1] == 1:  # a binary head's one logit: the two-class softmax of [0, z]
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    top = z.max(1)
    if method == "max_logit":
        return -top
    lse = top + np.log(np.exp(z - top[:, None]).sum(1))
    if method == "energy":
        return -lse
    if method == "msp":
        return 1.0 - np.exp(top - lse)
    raise ValueError(f"unknown OOD method {method!r}; one of {', '.join(METHODS)}")


def _mahalanobis(x: np.ndarray, stats: dict) -> np.ndarray:
    means = np.asarray(stats["means"], dtype=np.float64)
    best = np.full(len(x), np.inf)
    if "variances" in stats:
        inverse = 1.0 / np.asarray(stats["variances"], dtype=np.float64)
        for mean in means:
            best = np.minimum(best, ((x - mean) ** 2 * inverse).sum(1))
        return best
    precision = np.asarray(stats["precision"], dtype=np.float64)
    for mean in means:
        d = x - mean
        best = np.minimum(best, np.einsum("ij,jk,ik->i", d, precision, d, optimize=True))
    return best


def _knn(x: np.ndarray, bank: np.ndarray, k: int = KNN_K) -> np.ndarray:
    if len(bank) == 0:
        return np.zeros(len(x))
    k = min(k, len(bank))
    similarity = x @ bank.T
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def out_of_fold_scores(method: str, features, labels, num_classes: int, folds: int = 5):
    """Held-out scores for images that the final statistics are fitted on: each
    fold's images scored against statistics of the other folds (for training images
    pooled with the validation ones, which have no held-out images left)."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.zeros(len(labels))
    fold_of = np.arange(len(labels)) % max(2, min(folds, len(labels)))
    order = np.random.default_rng(0).permutation(len(labels))
    fold_of = fold_of[np.argsort(order)]
    x = np.asarray(features)
    for f in np.unique(fold_of):
        out = fold_of == f
        stats = fit_feature_stats(x[~out], labels[~out], num_classes, method)
        scores[out] = ood_scores(method, None, x[out], stats)
    return scores


def auroc(in_scores, out_scores) -> float | None:
    """Area under the ROC curve of telling ``out_scores`` (positives) from
    ``in_scores`` by the score: the chance that a random unknown image scores above
    a random known one (ties count half). None when either side is empty."""
    a = np.asarray(in_scores, dtype=np.float64)
    b = np.asarray(out_scores, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    unknown = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    return float(roc_auc_score(unknown, np.concatenate([a, b])))


def threshold_for_rate(scores, rate: float) -> float:
    """The score above which an image is called unknown, so that at most ``rate`` of
    new in-distribution images are (exchangeable with the held-out ``scores``): the
    ``ceil((n + 1)(1 - rate))``-th smallest held-out score; ``inf`` when there are too
    few scores to promise ``rate`` (nothing is then called unknown)."""
    from .conformal import conformal_quantile

    return conformal_quantile(scores, 1.0 - rate)


def check_rate(value, option: str = "--unknown-rate") -> float:
    """``value`` if it is a rate in [0, 1); else an :class:`InputError`."""
    from ..errors import InputError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise InputError(
            f"{option} {value!r}: the share of known images that may be called unknown "
            "is a fraction in [0, 1) (e.g. 0.05)"
        )
    return float(value)
