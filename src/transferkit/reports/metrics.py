"""Classification metrics as pure functions: numpy arrays in, dataclasses out.

Why pure: ``evaluate``, ``fit`` and ``report`` all need the same numbers, and tests must
compare them with scikit-learn's without a model, a file or a plot in the way. Nothing
here draws or touches the disk; the renderers live in ``plots`` and ``html``.

Conventions (chosen to agree with scikit-learn on untied scores):
- the prediction is the arg-max class; ties go to the lower class index, and top-k uses
  the same order, so top-1 accuracy always equals accuracy;
- precision, recall and F1 are 0 where they are 0/0 (a class never predicted or absent
  from the labels), like scikit-learn's ``zero_division=0``;
- balanced accuracy averages recall over the classes present in the labels, exactly as
  ``sklearn.metrics.balanced_accuracy_score`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError
from .overfitting import overfitting_gap  # noqa: F401  (its home before it had a module)


@dataclass
class ClassMetrics:
    """Precision, recall and F1 of one class, and how many labels it had (support)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Metrics:
    """Everything ``evaluate`` reports about a set of predictions.

    ``top_k_accuracy`` maps k to accuracy and holds only k smaller than the number of
    classes (top-K of K classes is always 1). ``confusion[i][j]`` counts examples of true
    class ``classes[i]`` predicted as ``classes[j]``. ``macro_f1`` (the unweighted mean of
    per-class F1, absent classes counting as 0) is reported as well.
    """

    accuracy: float
    balanced_accuracy: float
    top_k_accuracy: dict[int, float]
    ece: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]
    classes: list[str]
    n: int
    macro_f1: float = field(default=math.nan)

    def to_dict(self) -> dict:
        """A JSON-ready dict; top-k keys become strings so it survives a JSON round trip."""
        out = asdict(self)
        out["top_k_accuracy"] = {str(k): v for k, v in self.top_k_accuracy.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Metrics:
        """Rebuild from :meth:`to_dict`'s output (e.g. a run's ``metrics.json``)."""
        try:
            return cls(
                accuracy=float(data["accuracy"]),
                balanced_accuracy=float(data["balanced_accuracy"]),
                top_k_accuracy={int(k): float(v) for k, v in data["top_k_accuracy"].items()},
                ece=float(data["ece"]),
                per_class=[ClassMetrics(**c) for c in data["per_class"]],
                confusion=[[int(x) for x in row] for row in data["confusion"]],
                classes=[str(c) for c in data["classes"]],
                n=int(data["n"]),
                macro_f1=float(data.get("macro_f1", math.nan)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a metrics dict ({type(exc).__name__}: {exc})") from exc


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    top_k: Iterable[int] = (1, 3, 5),
    ece_bins: int = 15,
) -> Metrics:
    """Compute every evaluation metric from predicted probabilities and true labels.

    Args:
        probs: ``(N, K)`` class probabilities (rows sum to 1; pass softmax, not logits).
        labels: ``(N,)`` integer class indices in ``[0, K)``.
        classes: the K class names, in index order. Classes may be absent from
            ``labels``; they get support 0 and zero recall.
        top_k: which top-k accuracies to report; only k < K are kept.
        ece_bins: number of equal-width confidence bins for the calibration error.

    Example:
        >>> m = compute_metrics(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]), ["a", "b"])
        >>> m.accuracy, m.per_class[0].recall
        (0.5, 0.5)
    """
    probs, labels = _check_inputs(probs, labels, len(classes))
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise InputError(f"class names must be unique, got {names!r}")
    n, n_classes = probs.shape
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, probs.argmax(axis=1)), 1)
    per_class = _per_class(confusion, names)
    return Metrics(
        accuracy=float(np.trace(confusion) / n),
        balanced_accuracy=float(np.mean([c.recall for c in per_class if c.support > 0])),
        top_k_accuracy=_top_k(probs, labels, top_k),
        ece=expected_calibration_error(probs, labels, bins=ece_bins),
        per_class=per_class,
        confusion=confusion.tolist(),
        classes=names,
        n=n,
        macro_f1=float(np.mean([c.f1 for c in per_class])),
    )


def _per_class(confusion: np.ndarray, names: list[str]) -> list[ClassMetrics]:
    """Precision, recall, F1 and support of every class, from the confusion matrix."""
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, support + predicted)
    return [
        ClassMetrics(names[i], float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i in range(len(names))
    ]


def log_probabilities(probabilities) -> np.ndarray:
    """``log p`` in float64, used as logits (a probability of 0 becomes a very
    negative logit rather than -inf)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return np.log(np.clip(p, 1e-300, None))


def rescale(probabilities, temperature: float) -> np.ndarray:
    """The probabilities of the same logits at ``temperature`` relative to the ones
    given: ``softmax(log p / T)``. ``rescale(p_calibrated, 1 / T)`` recovers the
    uncalibrated probabilities of a model calibrated at ``T``."""
    z = log_probabilities(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: how far confidence sits from accuracy, on average.

    Confidences (the top probability) fall into ``bins`` equal-width bins, right-closed
    (``(0, 1/bins]``, ..., ``((bins-1)/bins, 1]``). ECE is the example-weighted mean over
    bins of ``|accuracy in bin - mean confidence in bin|`` (Guo et al., 2017).

    Example:
        >>> p = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])  # confidences 0.8, 0.7, 0.6
        >>> round(expected_calibration_error(p, np.array([0, 1, 0]), bins=2), 4)  # |2/3 - 0.7|
        0.0333
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise InputError(f"ECE bins must be a positive integer, got {bins!r}")
    probs, labels = _check_inputs(probs, labels, None)
    rows = confidence_bins(probs, labels, bins)
    return float(sum(n * abs(acc - conf) for conf, acc, n in rows) / len(labels))


def confidence_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[tuple]:
    """``(mean confidence, accuracy, count)`` of each of ``bins`` equal-width,
    right-closed confidence bins that holds examples, lowest first: what the ECE
    averages and a reliability diagram plots."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    # Compare with the same linspace edges a reader would compute, so that 0.7 lands in
    # (0.6, 0.7] even though 0.7 * 10 == 7.000000000000001 in floating point.
    inner_edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    which = np.searchsorted(inner_edges, confidence, side="left")
    rows = []
    for b in np.unique(which):
        in_bin = which == b
        rows.append((confidence[in_bin].mean(), correct[in_bin].mean(), int(in_bin.sum())))
    return rows


def most_confident_mistakes(probs: np.ndarray, labels: np.ndarray, k: int = 16) -> list[int]:
    """Indices of the ``k`` wrong predictions made with the highest confidence, most first.

    Why these: a confident mistake is the most informative one to look at (a mislabelled
    image, a confusable pair of classes, a shortcut the model learned). Equal confidences
    keep index order, so the result is deterministic.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise InputError(f"k must be a non-negative integer, got {k!r}")
    probs, labels = _check_inputs(probs, labels, None)
    wrong = np.flatnonzero(probs.argmax(axis=1) != labels)
    order = np.argsort(-probs[wrong].max(axis=1), kind="stable")
    return [int(i) for i in wrong[order][:k]]


def _check_inputs(probs, labels, n_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert; errors name what was received (these come from user data)."""
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise InputError(f"probs must be a non-empty (N, K) array, got shape {probs.shape}")
    if n_classes is not None and probs.shape[1] != n_classes:
        raise InputError(f"probs has {probs.shape[1]} columns but there are {n_classes} classes")
    if labels.shape != (probs.shape[0],):
        raise InputError(f"labels must have shape ({probs.shape[0]},), got {labels.shape}")
    if not np.isfinite(probs).all():
        raise InputError("probs contains NaN or infinite values")
    if probs.min() < -1e-6 or probs.max() > 1 + 1e-6 or not np.allclose(probs.sum(1), 1, atol=1e-2):
        raise InputError(
            "probs must be probabilities (each row in [0, 1], summing to 1); were logits passed?"
        )
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind != "f" or not np.array_equal(labels, np.round(labels)):
            raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        bad = labels[(labels < 0) | (labels >= probs.shape[1])][0]
        raise InputError(f"label {bad} is out of range; valid: 0..{probs.shape[1] - 1}")
    return probs, labels.astype(np.int64)


def _top_k(probs: np.ndarray, labels: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    # Stable sort of -p: ties keep index order, matching argmax (lowest index wins).
    ks = list(ks)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"top_k values must be positive integers, got {k!r}")
    order = np.argsort(-probs, axis=1, kind="stable")
    out: dict[int, float] = {}
    for k in sorted(set(ks)):
        if k < probs.shape[1]:
            out[int(k)] = float((order[:, :k] == labels[:, None]).any(axis=1).mean())
    return out


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)
