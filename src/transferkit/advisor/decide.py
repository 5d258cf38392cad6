"""The choice between strategies: data size x similarity to the pretraining data,
both measured (size counted, similarity from the measuring pass).

small + similar -> feature extraction at the top; small + different -> feature
extraction at the best (lower) cut; large + similar -> fine-tune the top blocks;
large + different -> fine-tune everything. A :class:`Decision` carries its numbers
and a plain-language reason.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field

SMALL_PER_CLASS = 30  # below this many training images per class, do not fine-tune
SAME_AS_BEST = 0.02  # top-layer probe within 2 points of the best cut = "similar"
BN_SIMILAR = 0.6  # mean BN overlap above this = activations look like pretraining's


@dataclass
class Decision:
    """What ``recommend`` advises and ``fit --strategy auto`` does."""

    strategy: str
    cut: str
    unfreeze: str | None
    image_size: int
    reason: str
    size: dict = field(default_factory=dict)
    similarity: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)  # cut -> TransferScores.to_dict()
    best_cut: str = ""
    seconds: float = 0.0
    # features compared by cross-validation on small data (each cut, joined cuts):
    # {"cut", "features", "head", "cv_accuracy", "cv_accuracy_std", "cv_log_loss"}
    candidates: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Facts:
    """The measured quantities a decision rests on."""

    per_class: list[int]
    median_per_class: float
    small: bool
    probe: dict
    best_cut: str
    top: str
    gap: float
    bn_overall: float | None
    similar: bool


def _facts(m, splits) -> _Facts:
    per_class = [sum(1 for e in splits.train if e.label == c) for c in range(len(splits.classes))]
    median_per_class = float(statistics.median(per_class))
    cuts = list(m.scores)
    probe = {c: m.scores[c].linear_probe_accuracy for c in cuts}
    best_cut = max(reversed(cuts), key=lambda c: probe[c])  # ties go to the higher cut
    top = cuts[-1]
    gap = probe[best_cut] - probe[top]
    bn_overall = m.bn.overall if math.isfinite(m.bn.overall) else None
    similar = gap <= SAME_AS_BEST and (bn_overall is None or bn_overall >= BN_SIMILAR)
    return _Facts(
        per_class,
        median_per_class,
        median_per_class < SMALL_PER_CLASS,
        probe,
        best_cut,
        top,
        gap,
        bn_overall,
        similar,
    )


def _why(f: _Facts) -> str:
    within = f.gap <= SAME_AS_BEST
    bn_text = f"{f.bn_overall:.2f}" if f.bn_overall is not None else "n/a (no BatchNorm)"
    why_size = (
        f"{f.median_per_class:.0f} training images per class (median) is "
        f"{'small' if f.small else 'enough to fine-tune'} (threshold {SMALL_PER_CLASS})"
    )
    why_sim = (
        f"the top layer's linear probe ({f.probe[f.top]:.3f}) is "
        f"{'within' if within else 'more than'} {SAME_AS_BEST:.2f} "
        f"{'of' if within else 'below'} the best layer's "
        f"({f.best_cut}: {f.probe[f.best_cut]:.3f}) and BN-statistics similarity is "
        f"{bn_text} (threshold {BN_SIMILAR}), so the data look "
        f"{'similar to' if f.similar else 'different from'} the pretraining data"
    )
    return f"{why_size}; {why_sim}"


def _choose(f: _Facts, allow_recut: bool, blocks: int) -> tuple[str, str, str | None, str]:
    """(strategy, cut, unfreeze, what it does) for the size x similarity cell."""
    if f.small and f.similar:
        return (
            "feature-extract",
            f.top,
            None,
            "train a new head on the frozen backbone's top features",
        )
    if f.small and allow_recut:
        action = f"cut lower, at {f.best_cut}, and train a new head on its features"
        return "feature-extract", f.best_cut, None, action
    if f.small:
        return (
            "feature-extract",
            f.top,
            None,
            "train a new head on the features at the cut you chose",
        )
    if f.similar:
        action = "train the head, then fine-tune the top 2 blocks gently"
        return "fine-tune", f.top, f"top:{min(2, blocks)}", action
    action = "train the head, then fine-tune the whole backbone from its pretrained weights"
    return "fine-tune", f.top, "all", action


def decide_from(
    m,
    backbone,
    splits,
    *,
    image_size_given: bool = False,
    allow_recut: bool = True,
    started: float | None = None,
) -> Decision:
    """The decision from a :class:`~.measure.Measurement` (see the module docstring).

    ``allow_recut=False`` (the user chose the cut) keeps small data at the top cut.
    """
    started = time.perf_counter() if started is None else started
    f = _facts(m, splits)
    strategy, cut, unfreeze, action = _choose(f, allow_recut, len(m.scores))
    reason = f"{_why(f)}: {action}."
    default_size = backbone.input_size[1]
    if m.image_size != default_size and not image_size_given:
        reason += (
            f" Images are about {m.image_side_median} px, so {m.image_size} px input is used "
            f"instead of {default_size} px."
        )
    return Decision(
        strategy=strategy,
        cut=cut,
        unfreeze=unfreeze,
        image_size=m.image_size,
        reason=reason,
        size={
            "n_train": len(splits.train),
            "classes": len(splits.classes),
            "per_class_median": f.median_per_class,
            "per_class_min": min(f.per_class),
            "image_side_median": m.image_side_median,
            "small": f.small,
        },
        similarity={
            "bn_overall": f.bn_overall,
            "bn_per_cut": m.bn_per_cut,
            "top_vs_best_probe_gap": f.gap,
            "similar": f.similar,
        },
        scores={c: s.to_dict() for c, s in m.scores.items()},
        best_cut=f.best_cut,
        seconds=time.perf_counter() - started,
    )


def for_feature_extraction(d: Decision, default_size: int, image_size_given: bool) -> Decision:
    """``feature-extract`` without a cut: the advisor's measurement picks the cut (the
    best cross-validated linear probe), since for data unlike the pretraining data
    lower layers transfer better."""
    import dataclasses

    if d.candidates:  # compared by cross-validation already (small data)
        return dataclasses.replace(d, strategy="feature-extract", unfreeze=None)
    probe = d.scores[d.best_cut]["linear_probe_accuracy"]
    reason = (
        f"feature extraction was asked for; the cut is measured: {d.best_cut} has the "
        f"best cross-validated linear probe ({probe:.3f}) of {len(d.scores)} cuts."
    )
    if d.image_size != default_size and not image_size_given:
        reason += (
            f" Images are about {d.size['image_side_median']} px, so {d.image_size} px "
            "input is used."
        )
    return dataclasses.replace(
        d, strategy="feature-extract", cut=d.best_cut, unfreeze=None, reason=reason
    )
