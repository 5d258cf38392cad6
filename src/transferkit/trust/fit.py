"""Fitting the run's trust data after training and calibration (see ``state``).

The OOD statistics come from the training images' pooled features (what the head
sees). The held-out in-distribution scores both thresholds are chosen on come from
the validation images, which the final model did not train on; when the
cross-validated head pooled them into training (small data), from out-of-fold
scores of every pooled image instead: each fold's features against statistics of
the other folds, and the out-of-fold probabilities the cross-validation made.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .conformal import nonconformity
from .ood import FEATURE_METHODS, fit_feature_stats, ood_scores, out_of_fold_scores
from .state import TrustState

log = logging.getLogger("transferkit")


def fit_trust(inputs, result, evaluations: dict, *, pooled: bool) -> TrustState:
    """The run's :class:`TrustState` (rank 0 alone calls this)."""
    cfg = inputs.config
    state = TrustState(unknown_rate=cfg.unknown_rate, coverage=cfg.coverage)
    splits, k = inputs.splits, inputs.num_classes
    val = evaluations.get("val")
    if val is None or not splits.val:
        state.reason = "no validation images to choose the thresholds on"
        log.info("trust: %s", state.reason)
        return state
    state.conformal_held_out = nonconformity(val.probabilities.double().numpy(), val.labels)
    train_x = pooled_features(inputs, result, splits.train, "train")
    train_y = np.array([e.label for e in splits.train], dtype=np.int64)
    val_x = pooled_features(inputs, result, splits.val, "val")
    val_y = np.array([e.label for e in splits.val], dtype=np.int64)
    method = state.method
    if pooled:  # every labelled image trained on: out-of-fold scores
        x, y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
        state.ood_held_out = out_of_fold_scores(method, x, y, k)
        state.stats = fit_feature_stats(x, y, k, method)
        state.source = "out-of-fold"
        oof = getattr(result, "out_of_fold", None)
        if oof is not None:  # every pooled image's, not only the validation part's
            state.conformal_held_out = nonconformity(oof.probabilities.double().numpy(), oof.labels)
    else:
        state.stats = fit_feature_stats(train_x, train_y, k, method)
        logits = held_out_logits(result.model, val_x) if method not in FEATURE_METHODS else None
        state.ood_held_out = ood_scores(method, logits, val_x, state.stats)
    state.ood_held_out = [float(v) for v in state.ood_held_out]
    state.conformal_held_out = [float(v) for v in state.conformal_held_out]
    log.info(
        "trust: %s OOD threshold %.4g (%g of known images called unknown), conformal "
        "quantile %.4g (coverage %g), from %d %s images",
        method,
        state.threshold,
        state.unknown_rate,
        state.quantile,
        state.coverage,
        len(state.conformal_held_out),
        state.source,
    )
    return state


def held_out_logits(model, pooled: np.ndarray) -> np.ndarray:
    """The calibrated logits of pooled features (the head after its pooling)."""
    head = model.head
    with torch.inference_mode():
        x = torch.from_numpy(np.asarray(pooled, dtype=np.float32))
        x = x.to(next(head.parameters()).device)
        return (head.layers[1:](x) / head.temperature).float().cpu().numpy()


@torch.no_grad()
def pooled_features(inputs, result, examples, split: str, view: str | None = None) -> np.ndarray:
    """The pooled features the final model's head sees for ``examples`` (``view``:
    ``"hflip"`` for their mirror images): from the feature cache when the base stayed
    frozen, else through the trained backbone."""
    from ..distributed import SINGLE
    from ..strategies.base import VIEWS, cached_features, image_dataset, make_loader

    model = result.model
    pool = model.head.layers[0]
    if not examples:
        return np.zeros((0, model.head.in_features), dtype=np.float32)
    if result.frozen_base:
        x = cached_features(inputs, examples, split, collective=SINGLE, view=view)
        return pool(x.float()).numpy()
    compute = inputs.runtime.compute
    dataset = image_dataset(inputs, examples, train=False)
    dataset = VIEWS[view](dataset) if view is not None else dataset
    loader = make_loader(inputs, dataset, shuffle=False)
    chunks = []
    model.eval()
    for x, _ in loader:
        with compute.autocast():
            feats = model.backbone.forward_features(compute.to_device(x))
        chunks.append(pool(feats.float()).cpu().numpy())
    return np.concatenate(chunks)
