"""The advisor plans; the strategies execute.

:func:`make_plan` runs before any strategy: for ``auto`` (and for ``feature-extract``
without a cut) it measures the data against the backbone, or reuses a remembered
decision, and returns a fixed :class:`Plan`: which strategy, which cut, which image
size, what to unfreeze, and why. Nothing is changed behind the plan's back: the
caller re-cuts the backbone and resolves the settings from it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from .decide import Decision, decide_from, for_feature_extraction
from .measure import Measurement, measure_splits
from .memory import AdviceStore

log = logging.getLogger("transferkit")


@dataclass(frozen=True)
class Plan:
    """What a fit will do.

    Attributes:
        strategy: ``feature-extract`` or ``fine-tune`` (never ``auto``).
        cut: the layer the backbone is cut at.
        image_size: input size (``None``: the backbone's own).
        unfreeze: what fine-tuning unfreezes (``all`` or ``top:N``).
        reason: why, in words.
        decision: the advisor's measured decision, when it ran (scores, sizes,
            similarity), else ``None``.
    """

    strategy: str
    cut: str | None
    image_size: int | None
    unfreeze: str
    reason: str = ""
    decision: Decision | None = None

    def resolve(self, config):
        """``config`` with the plan's choices filled in: what the run records."""
        if self.decision is None:
            return config
        return dataclasses.replace(
            config,
            strategy=self.strategy,
            image_size=self.image_size,
            unfreeze=self.unfreeze,
            cut=self.cut,
        )


def measured_decision(
    backbone,
    splits,
    *,
    image_size: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    compute=None,
    allow_recut: bool = True,
) -> tuple[Measurement, Decision]:
    """Measure the data against ``backbone`` and decide; returns both."""
    started = time.perf_counter()
    m = measure_splits(
        backbone, splits, image_size=image_size, seed=seed, workers=workers, compute=compute
    )
    decision = decide_from(
        m,
        backbone,
        splits,
        image_size_given=image_size is not None,
        allow_recut=allow_recut,
        started=started,
    )
    return m, decision


def decide(backbone, splits, **kwargs) -> Decision:
    """Measure and decide, with no memory (``recommend``); keyword arguments as
    :func:`measured_decision`'s."""
    return measured_decision(backbone, splits, **kwargs)[1]


def _measure_and_decide(backbone, splits, config, advice, compute, allow_recut):
    """Measure and decide, or reuse the decision remembered for the same inputs (then
    the measurement is ``None``: its features were cached by the first fit)."""
    path = None
    if advice is not None:
        path = advice.path(
            backbone,
            splits,
            image_size=config.image_size,
            seed=config.seed,
            allow_recut=allow_recut,
        )
        remembered = advice.get(path)
        if remembered is not None:
            return None, remembered
    m, decision = measured_decision(
        backbone,
        splits,
        image_size=config.image_size,
        seed=config.seed,
        workers=config.workers,
        compute=compute,
        allow_recut=allow_recut,
    )
    if advice is not None:
        advice.put(path, decision)
    return m, decision


def make_plan(
    backbone, splits, config, *, advice: AdviceStore | None = None, compute=None
) -> tuple[Plan, Measurement | None]:
    """The plan for fitting ``backbone`` to ``splits`` with ``config``, and the
    measurement it was made from (``None`` when nothing was measured)."""
    if config.strategy == "auto":
        m, d = _measure_and_decide(backbone, splits, config, advice, compute, config.cut is None)
        log.info("auto: %s", d.reason)
        unfreeze = d.unfreeze or config.unfreeze
        return Plan(d.strategy, d.cut, d.image_size, unfreeze, d.reason, d), m
    if config.strategy == "feature-extract" and config.cut is None and len(backbone.blocks) > 1:
        m, d = _measure_and_decide(backbone, splits, config, advice, compute, True)
        d = for_feature_extraction(d, backbone.input_size[1], config.image_size is not None)
        log.info("feature-extract: %s", d.reason)
        return Plan(d.strategy, d.cut, d.image_size, config.unfreeze, d.reason, d), m
    reason = f"{config.strategy} as asked, at {backbone.cut}"
    return Plan(config.strategy, backbone.cut, config.image_size, config.unfreeze, reason), None
