"""How precise an accuracy measured on n images is: the binomial standard error and
the Wilson 95% interval.

Why it matters here: transferkit is for small labelled sets, and their validation
splits are small too. 10 right out of 12 reads as "83.3%", but any true accuracy
from 55% to 95% gives that result often enough; two runs 8 points apart on 12
images are not different. The report shows the interval next to every accuracy
and says when a split is too small to judge, instead of quoting a false precision.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
SMALL_SPLIT = 30  # fewer images than this: an accuracy is a rough estimate at best
TOO_FEW = "too few to judge by"


def as_count(value: object) -> int | None:
    """``value`` as a number of images, or None when it is not a positive integer
    (a hand-edited or older metrics.json may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def binomial_se(accuracy: float, n: int) -> float | None:
    """Standard error of an accuracy measured on ``n`` images, ``sqrt(p(1-p)/n)``.

    None when ``n`` is unknown or zero.

    Example:
        >>> round(binomial_se(0.8, 100), 3)
        0.04
    """
    if not n or n <= 0 or accuracy is None or not math.isfinite(accuracy):
        return None
    p = min(max(float(accuracy), 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval (95% by default) of an accuracy measured on ``n`` images.

    Why Wilson and not ``p ± 2 SE``: the plain interval collapses to one point at 0%
    and 100% (3 right out of 3 is not "certainly 100%") and spills outside [0, 1] on
    small splits; Wilson's stays inside and is honest at the ends.

    Example:
        >>> low, high = wilson_interval(1.0, 3)  # 3 right out of 3
        >>> round(low, 3), high
        (0.439, 1.0)
    """
    if not n or n <= 0 or accuracy is None or not math.isfinite(accuracy):
        return None
    p = min(max(float(accuracy), 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval_range(accuracy: float, n: int | None) -> str:
    """``"95% interval 43.9–100.0%"``; empty when ``n`` is unknown."""
    interval = wilson_interval(accuracy, n) if n else None
    if interval is None:
        return ""
    return f"95% interval {100 * interval[0]:.1f}–{100 * interval[1]:.1f}%"


def interval_text(accuracy: float, n: int | None) -> str:
    """``"95% interval 43.9–100.0%, 3 images: too few to judge by"`` (the warning only
    under 30 images); empty when ``n`` is unknown."""
    text = interval_range(accuracy, n)
    if not text:
        return ""
    text += f", {n:,} images"
    return text + (f": {TOO_FEW}" if n < SMALL_SPLIT else "")
