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


def decide(
    backbone,
    splits,
    *,
    image_size: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    compute=None,
    allow_recut: bool = True,
    compare_features: bool = True,
) -> Decision:
    """Measure and decide as a fit would, with no memory (``recommend``).

    ``compare_features`` (small data, the cut not given): the candidate features are
    compared by cross-validation (:func:`compare_features_by_cv`), as ``fit`` does
    unless ``selection="holdout"``."""
    return _decided(
        backbone, splits, image_size, seed, workers, compute, allow_recut, compare_features
    )[1]


def _decided(backbone, splits, image_size, seed, workers, compute, allow_recut, compare):
    m, decision = measured_decision(
        backbone,
        splits,
        image_size=image_size,
        seed=seed,
        workers=workers,
        compute=compute,
        allow_recut=allow_recut,
    )
    if allow_recut and compare:
        decision = compare_features_by_cv(
            m,
            decision,
            splits,
            seed,
            joinable=getattr(backbone, "joinable_cuts", False),
            validation=lambda: _with_validation(backbone, m, splits, compute),
        )
    return m, decision


def _measure_and_decide(backbone, splits, config, advice, compute, allow_recut):
    """Measure and decide, or reuse the decision remembered for the same inputs (then
    the measurement is ``None``: its features were cached by the first fit)."""
    compare = config.selection != "holdout"
    path = None
    if advice is not None:
        path = advice.path(
            backbone,
            splits,
            image_size=config.image_size,
            seed=config.seed,
            allow_recut=allow_recut,
            compared_features=compare and COMPARISON_VERSION,
        )
        remembered = advice.get(path)
        if remembered is not None:
            return None, remembered
    m, decision = _decided(
        backbone,
        splits,
        config.image_size,
        config.seed,
        config.workers,
        compute,
        allow_recut,
        compare,
    )
    if advice is not None:
        advice.put(path, decision)
    return m, decision


CUTS_COMPARED = 3  # the linear probe's best few cuts, each alone
JOINED_COMPARED = (2, 3)  # and the best two and three joined side by side
COMPARISON_BUDGET_S = 30.0  # candidates after this many seconds are not compared
# what a remembered decision was compared with; a new candidate set measures again
COMPARISON_VERSION = "cuts3+joined2,3"


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


def _candidate_cuts(decision: Decision, joinable: bool) -> list[str]:
    """Single cuts by the probe's ranking (the decision's own first), then joined."""
    from ..backbones.base import join_cuts

    order = list(decision.scores)  # input to output
    probe = {c: s["linear_probe_accuracy"] for c, s in decision.scores.items()}
    ranked = sorted(order, key=probe.get, reverse=True)
    singles = list(dict.fromkeys([decision.cut, *ranked[:CUTS_COMPARED]]))
    joined = []
    if joinable:
        for k in JOINED_COMPARED:
            if k <= len(ranked):
                joined.append(join_cuts(sorted(ranked[:k], key=order.index)))
    return singles + joined


def compare_features_by_cv(
    m, decision: Decision, splits, seed: int, *, joinable: bool = False, validation=None
) -> Decision:
    """On small data the head is chosen by cross-validation over a penalty grid
    (``strategies/probe.py``); the features it reads are chosen the same way, on the
    measured features: the probe's best few cuts, and (``joinable``) the best two and
    three joined side by side. The table of every candidate goes in the decision."""
    if decision.strategy != "feature-extract" or not decision.size.get("small"):
        return decision
    import torch

    y = torch.tensor([e.label for e in m.examples])
    counts = torch.bincount(y, minlength=len(splits.classes))
    if int(counts[counts > 0].min()) < 2:
        return decision
    m = validation() if validation is not None else m
    y = torch.tensor([e.label for e in m.examples])
    rows = _score_candidates(m, y, len(splits.classes), _candidate_cuts(decision, joinable), seed)
    scored = [r for r in rows if r.get("cv_accuracy") is not None]
    # ties in accuracy keep the probe's cut: on data every candidate separates
    # perfectly, log-loss would favour whichever features are easiest to overfit
    best = max(
        scored, key=lambda r: (r["cv_accuracy"], r["cut"] == decision.cut, -r["cv_log_loss"])
    )
    why = _why_features(best, decision, scored, len(y))
    return dataclasses.replace(
        decision, cut=best["cut"], reason=decision.reason + why, candidates=rows
    )


def _score_candidates(m, y, n_classes: int, cuts: list[str], seed: int) -> list[dict]:
    import torch

    from .. import probe_head
    from ..backbones.base import cut_parts

    rows, started = [], time.perf_counter()
    for cut in cuts:
        x = np.concatenate([m.features[p] for p in cut_parts(cut)], axis=1)
        row = {"cut": cut, "features": int(x.shape[1])}
        spent = time.perf_counter() - started
        if rows and spent > COMPARISON_BUDGET_S:  # the first is always compared
            row["skipped"] = f"not compared: the {COMPARISON_BUDGET_S:.0f} s budget was spent"
            rows.append(row)
            continue
        chosen = probe_head.select(torch.from_numpy(x), y, n_classes, seed=seed).chosen
        row.update(
            head=chosen.name,
            cv_accuracy=chosen.accuracy,
            cv_accuracy_std=chosen.accuracy_std,
            cv_log_loss=chosen.log_loss,
        )
        rows.append(row)
    return rows


def _why_features(best: dict, decision: Decision, scored: list[dict], n: int) -> str:
    at = next(r for r in scored if r["cut"] == decision.cut)
    text = (
        f" {len(scored)} candidate features were compared by cross-validation on {n} "
        f"labelled images (the probe's best cuts, alone and joined): "
    )
    if best["cut"] == decision.cut:
        return text + f"{best['cut']} stays best ({best['cv_accuracy']:.3f})."
    return text + (
        f"{best['cut']} did best ({best['cv_accuracy']:.3f} against {at['cv_accuracy']:.3f} "
        f"at {decision.cut}), so the head is trained on it."
    )


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
