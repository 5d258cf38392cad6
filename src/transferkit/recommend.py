"""``transferkit recommend`` and ``transferkit rank``: measured advice before training.

``recommend`` measures the data against one backbone and says which strategy, cut
and image size a fit would use, and why. ``rank`` measures several backbones the
same way and orders them by a transferability score; with a test split it also
measures each one's linear-probe test accuracy, so the ranking can be checked.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from .advisor import Decision, decide, measure_splits
from .advisor.measure import eval_loader
from .compute import create_compute

log = logging.getLogger("transferkit")


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
    """Load ``data``, measure it against ``backbone``, decide."""
    from .backbones import create_backbone
    from .data import load_data

    splits = load_data(data, val_split=val_split, seed=seed)
    bb = create_backbone(backbone, weights=weights)
    compute = create_compute(torch.device(device))
    return decide(bb, splits, image_size=image_size, seed=seed, workers=workers, compute=compute)


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
    """Score each backbone at its top cut on the training split (and its linear-probe
    test accuracy where there is a test split); the ranking by ``by``."""
    from .data import load_data
    from .transferability.ranking import rank

    splits = load_data(data, val_split=val_split, seed=seed)
    compute = create_compute(torch.device(device))
    rows = [_score_backbone(spec, splits, image_size, seed, workers, compute) for spec in specs]
    return rank(rows, by)


def _score_backbone(spec, splits, image_size, seed, workers, compute):
    from .backbones import create_backbone
    from .transferability import pooled_features_per_cut
    from .transferability.ranking import BackboneScore, test_probe_accuracy

    t0 = time.perf_counter()
    bb = create_backbone(spec)
    m = measure_splits(
        bb, splits, image_size=image_size, seed=seed, workers=workers, compute=compute
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
        loader = eval_loader(
            bb, splits.test, m.image_size, workers=workers, device=compute.device.type
        )
        test_x = pooled_features_per_cut(bb, loader, [top])[top]
        train_y = np.array([e.label for e in m.examples])
        test_y = np.array([e.label for e in splits.test])
        test_acc = test_probe_accuracy(m.features[top], train_y, test_x, test_y)
    row = BackboneScore(
        spec, top, bb.num_features, m.image_size, scores, test_acc, time.perf_counter() - t0
    )
    log.info("rank: %s done in %.1fs", spec, row.seconds)
    return row
