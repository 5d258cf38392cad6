"""Temperature scaling: one number that makes a trained model's confidence honest.

After training, the logits of held-out images (validation, or the out-of-fold
predictions when the validation images were pooled into training) are divided by a
temperature ``T`` chosen to minimise their negative log-likelihood. ``T > 1`` softens
an over-confident model, ``T < 1`` sharpens an under-confident one. Dividing every
logit of an image by the same positive number never changes which class is largest,
so predictions (and accuracy) are unchanged; only the probabilities move.

Held-out predictions that exist only as probabilities are used through their logs:
``softmax(log p / T) == softmax(z / T)`` for any logits ``z`` with ``softmax(z) == p``
(softmax ignores a constant added to a row), and a binary head's sigmoid is the
two-class softmax of ``[0, z]``.

Example:
    >>> import numpy as np
    >>> z = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [4.0, 0.0]])
    >>> fit = fit_temperature(z, np.array([0, 1, 1, 0]))
    >>> fit.temperature > 1, fit.reason                  # a mistake at 98%: soften
    (True, None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .reports.metrics import expected_calibration_error, log_probabilities, rescale

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
# a temperature from a handful of images is noise (3 out-of-fold images gave T = 0.1,
# which made the expected calibration error worse): below this, none is fitted
MIN_IMAGES = 30


@dataclass
class TemperatureFit:
    """The fitted temperature, how many held-out images chose it, and why it is 1.0
    when it was not fitted (``reason``; None when it was)."""

    temperature: float
    images: int
    reason: str | None = None


def fit_temperature(logits, labels) -> TemperatureFit:
    """The temperature in [0.05, 20] minimising the mean NLL of ``softmax(logits / T)``.

    Args:
        logits: ``(N, K)`` logits (or log-probabilities) of held-out images.
        labels: ``(N,)`` their class indices.

    Returns 1.0 with the reason when there is nothing to fit on: no held-out images or
    fewer than ``MIN_IMAGES``, all of them of one class, or every one of them
    predicted right (the NLL then falls all the way to T = 0: no minimum, and no
    evidence of over-confidence).
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if z.ndim != 2 or len(z) == 0:
        return TemperatureFit(1.0, 0, "no held-out images to fit it on")
    if len(z) < MIN_IMAGES:
        reason = f"{len(z)} held-out images are too few to fit it on (at least {MIN_IMAGES})"
        return TemperatureFit(1.0, len(z), reason)
    if len(torch.unique(y)) < 2:
        return TemperatureFit(1.0, len(y), "the held-out images are all of one class")
    if bool((z.argmax(1) == y).all()):
        return TemperatureFit(1.0, len(y), "every held-out image is predicted right")
    z = torch.nan_to_num(z - z.amax(1, keepdim=True), neginf=-1e4)  # log(0) -> very unlikely
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    log_t = _golden_section(nll, lo, hi)
    # the bounded search can stop a hair inside a bound: the bound itself if better
    best = min((log_t, lo, hi), key=nll)
    return TemperatureFit(float(math.exp(best)), len(y))


def _golden_section(f, lo: float, hi: float, tol: float = 1e-6) -> float:
    """The minimum of ``f`` on [lo, hi] (NLL is convex in 1/T, unimodal in log T)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2


def calibration_fields(probabilities, labels, temperature: float) -> dict:
    """metrics.json's ``temperature``, ``ece`` and ``ece_uncalibrated`` for the
    calibrated ``probabilities`` of labelled images (the uncalibrated ones are
    recovered from them and ``temperature``)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    return {
        "temperature": float(temperature),
        "ece": expected_calibration_error(probs, labels),
        "ece_uncalibrated": expected_calibration_error(rescale(probs, 1 / temperature), labels),
    }


__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "TemperatureFit",
    "calibration_fields",
    "fit_temperature",
    "log_probabilities",
    "rescale",
]
