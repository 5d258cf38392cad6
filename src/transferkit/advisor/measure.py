"""The advisor's one pass over (a sample of) the training images.

The pass gives globally pooled features at every cut point and the BatchNorm
statistics of the data, through the same extraction path fitting uses, so its
features at the chosen cut can seed the feature cache.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..compute import Compute, create_compute

MAX_MEASURE_IMAGES = 2000  # a sample is enough to rank cuts; keeps the pass cheap


@dataclass
class Measurement:
    """What the pass measured.

    Attributes:
        examples: the (sampled) training examples, in feature-row order.
        features: ``{cut: (N, C)}`` average-pooled features.
        scores: ``{cut: TransferScores}``.
        bn: the data's BN-statistics similarity (``BNSimilarity``).
        bn_per_cut: its mean per cut.
        image_size: the input size the pass used.
        image_side_median: the images' median short side, when it was looked at.
    """

    examples: list
    features: dict
    scores: dict
    bn: object
    bn_per_cut: dict
    image_size: int
    image_side_median: int | None


def suggest_image_size(examples, default: int, sample: int = 64) -> tuple[int, int | None]:
    """The backbone's size, unless the images are much smaller: upsampling a 28 px
    image to 224 px costs 5x the compute of 96 px for no information. Returns
    ``(size, median short side)``."""
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


def sample_examples(examples, seed: int, limit: int = MAX_MEASURE_IMAGES) -> list:
    """All examples, or a seeded sample of ``limit`` in their original order."""
    if len(examples) <= limit:
        return list(examples)
    rng = np.random.default_rng(seed)
    return [examples[i] for i in sorted(rng.choice(len(examples), limit, replace=False))]


def why_not_measurable(examples, seed: int, classes=None) -> str | None:
    """Why the measuring pass could not score ``examples`` (its cross-validated probes
    need 2 classes and 2 images of every class in the sample it would take), or
    ``None`` when it can. Costs nothing: no image is opened."""
    counts = Counter(e.label for e in sample_examples(examples, seed))
    if len(counts) < 2:
        return f"the training images hold {len(counts)} class(es); measuring needs 2"
    label, fewest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    if fewest >= 2:
        return None
    name = classes[label] if classes is not None else label
    sampled = " of those sampled" if len(examples) > MAX_MEASURE_IMAGES else ""
    return (
        f"class {name!r} has {fewest} training image{sampled}, and measuring "
        "cross-validates with at least 2 per class"
    )


def require_measurable(examples, seed: int, classes=None) -> None:
    """Refuse at once, before any image goes through the backbone, what
    :func:`why_not_measurable` finds."""
    from ..errors import InputError

    problem = why_not_measurable(examples, seed, classes)
    if problem is not None:
        raise InputError(
            f"cannot measure the data: {problem}; add images (fit still trains: it "
            "skips the measurement and trains a head on the top layer's features)"
        )


def eval_loader(backbone, examples, image_size, *, batch_size=64, workers=None, device="cpu"):
    """Batches of ``examples`` preprocessed for ``backbone`` at ``image_size``, in order."""
    from ..data import ImageDataset, create_loader, create_transform

    tf = create_transform(backbone.data_config, train=False, image_size=image_size)
    return create_loader(
        ImageDataset(examples, tf, channels=backbone.input_size[0]),
        batch_size=batch_size,
        workers=workers,
        device=str(device),
    )


def measure(
    backbone,
    examples,
    *,
    image_size: int,
    seed: int = 0,
    workers: int | None = None,
    compute: Compute | None = None,
    image_side_median: int | None = None,
) -> Measurement:
    """One pass: pooled features at every cut point, BN similarity, scores per cut."""
    from ..transferability import bn_layers_by_cut, measure_per_cut, score_per_cut

    require_measurable(examples, seed)
    compute = compute or create_compute(torch.device("cpu"))
    examples = sample_examples(examples, seed)
    loader = eval_loader(
        backbone, examples, image_size, workers=workers, device=compute.device.type
    )
    cuts = [name for name, _ in backbone.blocks]
    feats, bn = measure_per_cut(backbone, loader, cuts, compute=compute)
    labels = np.array([e.label for e in examples])
    scores = score_per_cut(feats, labels, seed=seed)
    bn_per_cut = bn.per_cut(bn_layers_by_cut(backbone))
    return Measurement(examples, feats, scores, bn, bn_per_cut, image_size, image_side_median)


def measure_splits(
    backbone,
    splits,
    *,
    image_size: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    compute: Compute | None = None,
) -> Measurement:
    """:func:`measure` on the training split at the given or suggested image size."""
    require_measurable(splits.train, seed, splits.classes)
    suggested, median_side = suggest_image_size(splits.train, backbone.input_size[1])
    return measure(
        backbone,
        splits.train,
        image_size=image_size or suggested,
        seed=seed,
        workers=workers,
        compute=compute,
        image_side_median=median_side,
    )
