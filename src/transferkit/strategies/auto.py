"""Strategy ``auto``: rule R6's 2x2 choice (data size x similarity), *measured*.

One pass of the training images through the frozen backbone gives pooled features at
every candidate cut and the BatchNorm statistics of the data. From them:

- size: median training images per class;
- transferability per cut: cross-validated linear-probe accuracy (the head we would
  train), k-NN accuracy and LogME;
- similarity to the pretraining data: (a) whether the last layer's features are as
  good as the best layer's — dissimilar data peak lower — and (b) how close the
  data's activation statistics sit to the BN running statistics.

Then: small + similar -> feature extraction at the top; small + different -> feature
extraction at the best (lower) cut; large + similar -> fine-tune the top blocks;
large + different -> fine-tune everything. The decision carries its numbers and a
plain-language reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..compute import create_compute

log = logging.getLogger("transferkit")

SMALL_PER_CLASS = 30  # below this many training images per class, do not fine-tune
SAME_AS_BEST = 0.02  # top-layer probe within 2 points of the best cut = "similar"
BN_SIMILAR = 0.6  # mean BN overlap above this = activations look like pretraining's
MAX_MEASURE_IMAGES = 2000  # a sample is enough to rank cuts; keeps the pass cheap


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

    def to_dict(self) -> dict:
        return asdict(self)


def suggest_image_size(examples, default: int, sample: int = 64) -> tuple[int, int | None]:
    """The backbone's size, unless the images are much smaller: upsampling a 28 px
    image to 224 px costs 5x the compute of 96 px for no information."""
    from PIL import Image

    sides = []
    for ex in examples[:sample]:
        try:
            with Image.open(ex.path) as im:
                sides.append(min(im.size))
        except OSError:
            continue
    if not sides:
        return default, None
    median = int(statistics.median(sides))
    if median * 4 >= default:
        return default, median
    return max(64, min(default, math.ceil(3 * median / 32) * 32)), median


def _sample(examples, seed: int, limit: int = MAX_MEASURE_IMAGES):
    if len(examples) <= limit:
        return list(examples)
    rng = np.random.default_rng(seed)
    return [examples[i] for i in sorted(rng.choice(len(examples), limit, replace=False))]


@dataclass
class Measurement:
    """The advisor's one pass over (a sample of) the training images."""

    examples: list
    features: dict  # cut -> (N, C) avg-pooled features
    scores: dict  # cut -> TransferScores
    bn: object  # BNSimilarity
    bn_per_cut: dict
    image_size: int
    image_side_median: int | None


def measure(
    backbone,
    examples,
    *,
    image_size: int,
    seed: int = 0,
    batch_size: int = 64,
    workers=None,
    device="cpu",
    image_side_median=None,
) -> Measurement:
    """One pass: pooled features per cut (the backbone's blocks up to its cut), BN
    similarity, scores per cut."""
    from ..transferability import bn_layers_by_cut, measure_per_cut, score_per_cut

    examples = _sample(examples, seed)
    loader = _eval_loader(backbone, examples, image_size, batch_size, workers, device)
    create_compute(torch.device(device)).prepare(backbone)  # NHWC: faster convolutions
    cuts = [name for name, _ in backbone.blocks]
    feats, bn = measure_per_cut(backbone, loader, cuts)
    labels = np.array([e.label for e in examples])
    scores = score_per_cut(feats, labels, seed=seed)
    bn_per_cut = bn.per_cut(bn_layers_by_cut(backbone))
    return Measurement(examples, feats, scores, bn, bn_per_cut, image_size, image_side_median)


def _eval_loader(backbone, examples, image_size, batch_size=64, workers=None, device="cpu"):
    from ..data import ImageDataset, create_loader, create_transform

    tf = create_transform(backbone.data_config, train=False, image_size=image_size)
    return create_loader(
        ImageDataset(examples, tf, channels=backbone.input_size[0]),
        batch_size=batch_size,
        workers=workers,
        device=str(device),
    )


def measure_splits(
    backbone, splits, *, image_size: int | None = None, seed: int = 0, workers=None, device="cpu"
) -> Measurement:
    """``measure`` on the training split at the suggested (or given) image size."""
    suggested, median_side = suggest_image_size(splits.train, backbone.input_size[1])
    return measure(
        backbone,
        splits.train,
        image_size=image_size or suggested,
        seed=seed,
        workers=workers,
        device=device,
        image_side_median=median_side,
    )


def decide(
    backbone,
    splits,
    *,
    image_size: int | None = None,
    seed: int = 0,
    workers=None,
    device="cpu",
    allow_recut: bool = True,
) -> Decision:
    """Measure the data against ``backbone`` and choose a strategy (see module doc)."""
    started = time.perf_counter()
    m = measure_splits(
        backbone, splits, image_size=image_size, seed=seed, workers=workers, device=device
    )
    return decide_from(
        m,
        backbone,
        splits,
        image_size_given=image_size is not None,
        allow_recut=allow_recut,
        started=started,
    )


def decide_from(
    m: Measurement,
    backbone,
    splits,
    *,
    image_size_given: bool = False,
    allow_recut: bool = True,
    started: float | None = None,
) -> Decision:
    """The R6 decision from a measurement (see module doc)."""
    started = time.perf_counter() if started is None else started
    default_size = backbone.input_size[1]
    size_px, median_side = m.image_size, m.image_side_median
    scores, bn, bn_per_cut = m.scores, m.bn, m.bn_per_cut
    per_class = [sum(1 for e in splits.train if e.label == c) for c in range(len(splits.classes))]
    median_per_class = float(statistics.median(per_class))
    small = median_per_class < SMALL_PER_CLASS
    cuts = list(scores)
    probe = {c: scores[c].linear_probe_accuracy for c in cuts}
    best_cut = max(reversed(cuts), key=lambda c: probe[c])  # ties go to the higher cut
    top = cuts[-1]
    gap = probe[best_cut] - probe[top]
    overall_bn = bn.overall if math.isfinite(bn.overall) else None
    similar = gap <= SAME_AS_BEST and (overall_bn is None or overall_bn >= BN_SIMILAR)
    why_size = (
        f"{median_per_class:.0f} training images per class (median) is "
        f"{'small' if small else 'enough to fine-tune'} (threshold {SMALL_PER_CLASS})"
    )
    bn_text = f"{overall_bn:.2f}" if overall_bn is not None else "n/a (no BatchNorm)"
    why_sim = (
        f"the top layer's linear probe ({probe[top]:.3f}) is "
        f"{'within' if gap <= SAME_AS_BEST else 'more than'} {SAME_AS_BEST:.2f} "
        f"{'of' if gap <= SAME_AS_BEST else 'below'} the best layer's "
        f"({best_cut}: {probe[best_cut]:.3f}) and BN-statistics similarity is "
        f"{bn_text} (threshold {BN_SIMILAR}), so the data look "
        f"{'similar to' if similar else 'different from'} the pretraining data"
    )
    blocks_above = len(cuts)
    if small and similar:
        strategy, cut, unfreeze = "feature-extract", top, None
        action = "train a new head on the frozen backbone's top features"
    elif small and allow_recut:
        strategy, cut, unfreeze = "feature-extract", best_cut, None
        action = f"cut lower, at {best_cut}, and train a new head on its features"
    elif small:
        strategy, cut, unfreeze = "feature-extract", top, None
        action = "train a new head on the features at the cut you chose"
    elif similar:
        strategy, cut, unfreeze = "fine-tune", top, f"top:{min(2, blocks_above)}"
        action = "train the head, then fine-tune the top 2 blocks gently"
    else:
        strategy, cut, unfreeze = "fine-tune", top, "all"
        action = "train the head, then fine-tune the whole backbone from its pretrained weights"
    reason = f"{why_size}; {why_sim}: {action}."
    if size_px != default_size and not image_size_given:
        reason += (
            f" Images are about {median_side} px, so {size_px} px input is used "
            f"instead of {default_size} px."
        )
    return Decision(
        strategy=strategy,
        cut=cut,
        unfreeze=unfreeze,
        image_size=size_px,
        reason=reason,
        size={
            "n_train": len(splits.train),
            "classes": len(splits.classes),
            "per_class_median": median_per_class,
            "per_class_min": min(per_class),
            "image_side_median": median_side,
            "small": small,
        },
        similarity={
            "bn_overall": overall_bn,
            "bn_per_cut": bn_per_cut,
            "top_vs_best_probe_gap": gap,
            "similar": similar,
        },
        scores={c: s.to_dict() for c, s in scores.items()},
        best_cut=best_cut,
        seconds=time.perf_counter() - started,
    )


def _advice_path(ctx, allow_recut: bool):
    """Where a decision for exactly this backbone, data and settings is remembered, so a
    second fit on the same data runs the backbone zero times (R5) even under ``auto``."""
    import hashlib
    import json

    from ..features import model_key

    cfg = ctx.config
    key = {
        "model": model_key(ctx.backbone, ctx.backbone.data_config, cfg.image_size, "advice"),
        "train": sorted(e.digest + ":" + str(e.label) for e in ctx.splits.train),
        "classes": list(ctx.splits.classes),
        "seed": cfg.seed,
        "recut": allow_recut,
        "rules": [SMALL_PER_CLASS, SAME_AS_BEST, BN_SIMILAR, MAX_MEASURE_IMAGES],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return ctx.cache.root / "advice" / f"{digest}.json"


def _measure_and_decide(ctx, allow_recut: bool = True) -> tuple[Measurement | None, Decision]:
    """Measure and decide, or reuse the decision remembered for the same inputs (then
    the measurement is ``None``: its features were cached by the first run)."""
    import json

    from ..atomic import atomic_write_text

    cfg = ctx.config
    path = _advice_path(ctx, allow_recut)
    if path.is_file():
        try:
            decision = Decision(**json.loads(path.read_text()))
            log.info("reusing the measured decision for this data (%s)", path.name)
            return None, decision
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
    started = time.perf_counter()
    m = measure_splits(
        ctx.backbone,
        ctx.splits,
        image_size=cfg.image_size,
        seed=cfg.seed,
        workers=cfg.workers,
        device=ctx.device,
    )
    decision = decide_from(
        m,
        ctx.backbone,
        ctx.splits,
        image_size_given=cfg.image_size is not None,
        allow_recut=allow_recut,
        started=started,
    )
    if ctx.collective.is_main:  # under torchrun, rank 0 alone writes (docs/distributed.md)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(decision.to_dict()))
    return m, decision


def run(ctx):
    """``fit --strategy auto``: measure, decide, then run the chosen strategy."""
    from . import RUNNERS

    m, decision = _measure_and_decide(ctx, allow_recut=ctx.config.cut is None)
    log.info("auto: %s", decision.reason)
    apply_decision(ctx, m, decision)
    torch.manual_seed(ctx.config.seed)
    result = RUNNERS[decision.strategy](ctx)
    result.decision = decision
    return result


def choose_feature_cut(ctx) -> Decision:
    """``feature-extract`` without ``--cut``: the cut is measured, not assumed (R6: for
    data unlike the pretraining data, lower layers transfer better)."""
    m, d = _measure_and_decide(ctx, allow_recut=True)
    probe = d.scores[d.best_cut]["linear_probe_accuracy"]
    reason = (
        f"feature extraction was asked for; the cut is measured: {d.best_cut} has the "
        f"best cross-validated linear probe ({probe:.3f}) of {len(d.scores)} cuts."
    )
    if d.image_size != ctx.backbone.input_size[1] and ctx.config.image_size is None:
        reason += (
            f" Images are about {d.size['image_side_median']} px, so {d.image_size} px "
            "input is used."
        )
    fe = dataclasses.replace(
        d, strategy="feature-extract", cut=d.best_cut, unfreeze=None, reason=reason
    )
    log.info("feature-extract: %s", reason)
    apply_decision(ctx, m, fe)
    return fe


def apply_decision(ctx, m: Measurement | None, decision: Decision) -> None:
    """Re-cut the backbone and resolve the config as decided; the measuring pass doubles
    as feature extraction: its features at the chosen cut seed the cache, so the
    backbone does not run over the same images twice."""
    from ..features import representation_for

    if decision.cut != ctx.backbone.cut:
        ctx.backbone = _recut(ctx.backbone, decision.cut)
    ctx.config = dataclasses.replace(
        ctx.config,
        strategy=decision.strategy,
        image_size=decision.image_size,
        unfreeze=decision.unfreeze or ctx.config.unfreeze,
        cut=ctx.backbone.cut,
    )
    representation = representation_for(ctx.config.head.pooling)
    if representation == "avg" and m is not None:
        ctx.cache.put(
            ctx.backbone,
            [e.digest for e in m.examples],
            m.features[decision.cut],
            data_config=ctx.backbone.data_config,
            image_size=decision.image_size,
            representation=representation,
        )


def _recut(backbone, cut: str):
    """The same backbone cut lower (a fresh copy: cutting prunes what runs after)."""
    import copy

    from ..backbones.base import Backbone

    fresh = copy.deepcopy(backbone)
    if fresh._cut_hook is not None:
        raise RuntimeError("cannot re-cut a backbone that is already cut")
    return Backbone(
        fresh.model,
        name=fresh.name,
        spec=fresh.spec,
        data_config=fresh.data_config,
        features_fn=fresh._features_fn,
        cut=cut,
        digest=fresh.weights_digest,
        source=fresh.source,
    )


def recommend(
    data,
    backbone="efficientnet_lite0",
    *,
    weights=None,
    image_size=None,
    seed=0,
    val_split=0.2,
    workers=None,
    device="cpu",
) -> Decision:
    """``transferkit recommend``: load the data, measure, decide."""
    from ..backbones import create_backbone
    from ..data import load_data

    splits = load_data(data, val_split=val_split, seed=seed)
    bb = create_backbone(backbone, weights=weights)
    return decide(bb, splits, image_size=image_size, seed=seed, workers=workers, device=device)


def rank_backbones(
    data,
    specs,
    *,
    by="linear_probe_accuracy",
    image_size=None,
    seed=0,
    val_split=0.2,
    workers=None,
    device="cpu",
):
    """``transferkit rank``: score each backbone at its top cut on the training split;
    with a test split, also measure each one's linear-probe test accuracy."""
    from ..backbones import create_backbone
    from ..data import load_data
    from ..transferability import pooled_features_per_cut
    from ..transferability.ranking import BackboneScore, rank, test_probe_accuracy

    splits = load_data(data, val_split=val_split, seed=seed)
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        bb = create_backbone(spec)
        m = measure_splits(
            bb, splits, image_size=image_size, seed=seed, workers=workers, device=device
        )
        top = [name for name, _ in bb.blocks][-1]
        s = m.scores[top]
        scores = {
            "logme": s.logme,
            "knn_accuracy": s.knn_accuracy,
            "linear_probe_accuracy": s.linear_probe_accuracy,
            "bn_similarity": m.bn.overall if math.isfinite(m.bn.overall) else None,
        }
        test_acc = None
        if splits.test:
            loader = _eval_loader(bb, splits.test, m.image_size, workers=workers, device=device)
            test_x = pooled_features_per_cut(bb, loader, [top])[top]
            train_y = np.array([e.label for e in m.examples])
            test_y = np.array([e.label for e in splits.test])
            test_acc = test_probe_accuracy(m.features[top], train_y, test_x, test_y)
        rows.append(
            BackboneScore(
                spec, top, bb.num_features, m.image_size, scores, test_acc, time.perf_counter() - t0
            )
        )
        log.info("rank: %s done in %.1fs", spec, rows[-1].seconds)
    return rank(rows, by)
