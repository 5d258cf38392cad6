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

import numpy as np

from .decide import Decision, decide_from, for_feature_extraction
from .measure import Measurement, measure_splits, suggest_image_size, why_not_measurable
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
        planned = dataclasses.replace(
            config, strategy=self.strategy, image_size=self.image_size, unfreeze=self.unfreeze
        )
        if self.decision is None:  # the cut as given (None: the backbone's top)
            return planned
        return dataclasses.replace(planned, cut=self.cut)


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
            cut_by_selection=config.selection != "holdout" and CUTS_COMPARED,
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
    if allow_recut and config.selection != "holdout":
        decision = _cut_by_selection(
            m,
            decision,
            splits,
            config.seed,
            validation=lambda: _with_validation(backbone, m, splits, compute),
        )
    if advice is not None:
        advice.put(path, decision)
    return m, decision


CUTS_COMPARED = 3


def _with_validation(backbone, m: Measurement, splits, compute) -> Measurement:
    """The measured training features, and the validation images' at every cut when
    the head will train on them too (a split we made, small data): the cut is then
    chosen on the same labelled images as the head."""
    from ..features import collect_features
    from .measure import eval_loader

    if not splits.val or splits.split.get("source") != "stratified":
        return m
    if len(m.examples) < len(splits.train):  # sampled: not small data
        return m
    device = compute.device.type if compute is not None else "cpu"
    loader = eval_loader(backbone, splits.val, m.image_size, device=device)
    cuts = list(m.features)
    val = collect_features(backbone, loader, cuts=cuts, representation="avg", compute=compute)
    features = {c: np.concatenate([m.features[c], val[c]]) for c in cuts}
    return dataclasses.replace(m, examples=[*m.examples, *splits.val], features=features)


def _cut_by_selection(m, decision: Decision, splits, seed: int, validation=None) -> Decision:
    """On small data the head is chosen by cross-validation over a penalty grid
    (``strategies/probe.py``); the cut is chosen the same way among the probe's best
    few, on the measured features, instead of by the probe's one fixed penalty."""
    if decision.strategy != "feature-extract" or not decision.size.get("small"):
        return decision
    import torch

    m = validation() if validation is not None else m

    from .. import probe_head

    probe = {c: s["linear_probe_accuracy"] for c, s in decision.scores.items()}
    cuts = sorted(probe, key=probe.get, reverse=True)[:CUTS_COMPARED]
    cuts += [] if decision.cut in cuts else [decision.cut]
    y = torch.tensor([e.label for e in m.examples])
    n = len(splits.classes)
    counts = torch.bincount(y, minlength=n)
    if int(counts[counts > 0].min()) < 2:
        return decision
    scored = {}
    for cut in cuts:
        chosen = probe_head.select(torch.from_numpy(m.features[cut]), y, n, seed=seed).chosen
        scored[cut] = (chosen.accuracy, -chosen.log_loss)
    best = max(cuts, key=lambda c: (scored[c], c == decision.cut))
    if best == decision.cut:
        return decision
    why = (
        f" With the penalty cross-validated too, {best} did best of the probe's top cuts "
        f"({scored[best][0]:.3f} against {scored[decision.cut][0]:.3f} at {decision.cut}), "
        f"so the head is trained at {best}."
    )
    return dataclasses.replace(decision, cut=best, reason=decision.reason + why)


def _own_size_if_fixed(backbone, config):
    """``config`` with the backbone's own image size where no other would do: a
    backbone that takes only its own size, or a head that flattens feature maps
    sized for it. Elsewhere the advisor may suggest a smaller size for small images."""
    fixed = getattr(backbone, "fixed_input_size", False) or config.head.pooling == "flatten"
    if config.image_size is not None or not fixed:
        return config
    return dataclasses.replace(config, image_size=backbone.input_size[1])


def _needs_measuring(backbone, config) -> bool:
    if config.strategy == "auto":
        return True
    return config.strategy == "feature-extract" and config.cut is None and len(backbone.blocks) > 1


def _unmeasured_plan(backbone, splits, config) -> Plan | None:
    """When the plan would measure but the data forbid it (a class with one training
    image: nothing to cross-validate), the plan that needs no measurement, said in a
    log line: a head on the features at the backbone's cut. ``None`` otherwise."""
    if not _needs_measuring(backbone, config):
        return None
    problem = why_not_measurable(splits.train, config.seed, splits.classes)
    if problem is None:
        return None
    size = config.image_size
    if size is None:
        size, _ = suggest_image_size(splits.train, backbone.input_size[1])
    reason = (
        f"not measured: {problem}; so feature extraction at {backbone.cut}, "
        f"{size} px (add images to let {config.strategy} measure)"
    )
    log.warning("%s: %s", config.strategy, reason)
    return Plan("feature-extract", backbone.cut, size, config.unfreeze, reason)


def make_plan(
    backbone, splits, config, *, advice: AdviceStore | None = None, compute=None
) -> tuple[Plan, Measurement | None]:
    """The plan for fitting ``backbone`` to ``splits`` with ``config``, and the
    measurement it was made from (``None`` when nothing was measured)."""
    config = _own_size_if_fixed(backbone, config)
    unmeasured = _unmeasured_plan(backbone, splits, config)
    if unmeasured is not None:
        return unmeasured, None
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
