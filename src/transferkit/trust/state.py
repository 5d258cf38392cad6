"""What a run keeps to say how far to trust each prediction, and how it is stored.

``trust.json`` holds the settings (``unknown_rate``, ``coverage``), the OOD method,
and the held-out in-distribution scores both thresholds come from (so
``predict --unknown-rate/--coverage`` recompute them without a refit);
``trust.safetensors`` holds the feature statistics of the OOD score (class means
and shared precision). A run from before either existed loads with ``TrustState``
absent: its predictions carry null trust fields and a note saying why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..run_files import TRUST, TRUST_STATS
from .conformal import DEFAULT_COVERAGE, check_coverage, conformal_quantile
from .ood import DEFAULT_METHOD, ood_scores, threshold_for_rate

DEFAULT_UNKNOWN_RATE = 0.05
NOT_RECORDED = "the run was fitted before transferkit recorded OOD and conformal data; fit it again"


@dataclass
class TrustState:
    """The run's OOD score and prediction-set data.

    Attributes:
        method: the OOD score (``trust.ood.METHODS``).
        unknown_rate: share of known images allowed to be called unknown.
        coverage: wanted share of prediction sets holding the true class.
        ood_held_out: OOD scores of held-out in-distribution images.
        conformal_held_out: LAC scores (``1 - p(true class)``) of held-out images.
        source: which images those are (``validation`` or ``out-of-fold``).
        stats: the OOD score's feature statistics (arrays).
        reason: why there is no threshold or quantile (None when there are).
    """

    method: str = DEFAULT_METHOD
    unknown_rate: float = DEFAULT_UNKNOWN_RATE
    coverage: float = DEFAULT_COVERAGE
    ood_held_out: list[float] = field(default_factory=list)
    conformal_held_out: list[float] = field(default_factory=list)
    source: str = "validation"
    stats: dict = field(default_factory=dict, repr=False)
    reason: str | None = None

    def with_settings(self, unknown_rate=None, coverage=None) -> TrustState:
        """A copy with other settings (None: keep); thresholds follow."""
        from .ood import check_rate

        new = replace(self)
        if unknown_rate is not None:
            new.unknown_rate = check_rate(unknown_rate)
        if coverage is not None:
            new.coverage = check_coverage(coverage)
        return new

    @property
    def threshold(self) -> float | None:
        """OOD score above which an image is ``unknown`` (None: no held-out scores)."""
        if not self.ood_held_out:
            return None
        return threshold_for_rate(self.ood_held_out, self.unknown_rate)

    @property
    def quantile(self) -> float | None:
        """The conformal threshold on ``1 - p`` (None: no held-out scores)."""
        if not self.conformal_held_out:
            return None
        return conformal_quantile(self.conformal_held_out, self.coverage)

    def notes(self) -> list[str]:
        """Why a threshold is missing or cannot be met with the held-out images."""
        from .conformal import finite_sample_rank

        found = [self.reason] if self.reason else []
        n = len(self.ood_held_out)
        if n and self.unknown_rate > 0 and finite_sample_rank(n, 1 - self.unknown_rate) > n:
            found.append(
                f"{n} held-out images are too few to hold the unknown rate at "
                f"{self.unknown_rate:g} (at least {_needed(self.unknown_rate)}): no image "
                "is called unknown"
            )
        n = len(self.conformal_held_out)
        if n and finite_sample_rank(n, self.coverage) > n:
            found.append(
                f"{n} held-out images are too few for coverage {self.coverage:g} (at least "
                f"{_needed(1 - self.coverage)}): every prediction set holds every class"
            )
        return found

    def scores(self, logits, features) -> np.ndarray | None:
        """OOD scores of images from their calibrated logits and pooled features."""
        if not self.stats and self.method in ("mahalanobis", "knn"):
            return None
        return ood_scores(self.method, logits, features, self.stats)

    def summary(self) -> dict:
        """metrics.json's trust fields."""
        return {
            "ood_method": self.method,
            "unknown_rate": self.unknown_rate,
            "ood_threshold": _finite(self.threshold),
            "coverage_target": self.coverage,
            "conformal_quantile": _finite(self.quantile),
            "trust_images": len(self.conformal_held_out),
            "trust_source": self.source,
            "trust_reason": self.reason,
        }

    def to_json(self) -> dict:
        return {
            "format": 1,
            "method": self.method,
            "unknown_rate": self.unknown_rate,
            "coverage": self.coverage,
            "source": self.source,
            "reason": self.reason,
            "ood_held_out": [float(v) for v in self.ood_held_out],
            "conformal_held_out": [float(v) for v in self.conformal_held_out],
        }


def _needed(alpha: float) -> int:
    """The fewest held-out images with ``ceil((n + 1)(1 - alpha)) <= n``."""
    return math.ceil((1 - alpha) / alpha - 1e-9) if alpha > 0 else 0


def _finite(value):
    return None if value is None or not math.isfinite(value) else float(value)


def save_trust(run: Path, state: TrustState | None) -> None:
    """Write ``trust.json`` (and ``trust.safetensors`` when there are statistics)."""
    from ..atomic import atomic_write_text, save_tensors
    from ..run_files import to_json

    if state is None:
        return
    if state.stats:
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.stats.items()}
        save_tensors(run / TRUST_STATS, tensors, metadata={"format": "transferkit-trust"})
    atomic_write_text(run / TRUST, to_json(state.to_json()))


def trust_from_json(record: dict) -> TrustState:
    """A :class:`TrustState` (without statistics) from :meth:`TrustState.to_json`."""
    return TrustState(
        method=str(record["method"]),
        unknown_rate=float(record["unknown_rate"]),
        coverage=float(record["coverage"]),
        ood_held_out=[float(v) for v in record["ood_held_out"]],
        conformal_held_out=[float(v) for v in record["conformal_held_out"]],
        source=str(record.get("source", "validation")),
        reason=record.get("reason"),
    )


def load_trust(run: Path) -> TrustState | None:
    """The run's trust data; None for a run that has none (fitted before it existed).
    Raises :class:`InputError` for a damaged file."""
    from ..errors import InputError

    path = Path(run) / TRUST
    if not path.is_file():
        return None
    try:
        state = trust_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{str(path)!r} is not a valid trust record ({exc}); fit the run again"
        ) from None
    stats_path = Path(run) / TRUST_STATS
    if stats_path.is_file():
        from safetensors.numpy import load_file

        try:
            state.stats = dict(load_file(str(stats_path)))
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"cannot read {str(stats_path)!r}: {first}; fit the run again"
            ) from None
    return state
