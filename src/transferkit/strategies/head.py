"""Phase 1 of every strategy: freeze first. The base is frozen and run once (its
features cached); a new head trains on the cached features until validation loss
stops improving, and the best epoch's weights are kept.

Under torchrun the processes share the feature extraction, and rank 0 alone trains
the head on the gathered features (seconds) and hands its weights to the others, so
every process starts fine-tuning from identical weights.
"""

from __future__ import annotations

import logging

import torch

from ..compute import as_compute
from ..freezing import create_optimizer, freeze, set_bn_policy
from ..heads import ClassifierHead, create_head
from ..training import (
    EarlyStopping,
    PhaseConfig,
    PhaseData,
    PhaseResult,
    Runtime,
    fit_phase,
    stateful,
)
from .base import (
    TrainingInputs,
    cached_features,
    has_validation,
    kept_last,
    labels_of,
    objective,
    stopping_rule,
    tensor_batches,
)

log = logging.getLogger("transferkit")


def train_head(inputs: TrainingInputs) -> tuple[ClassifierHead, PhaseResult]:
    """Train a new head on the frozen base's cached features; returns it and how the
    phase went."""
    cfg, collective = inputs.config, inputs.runtime.collective
    freeze(inputs.backbone)
    set_bn_policy(inputs.backbone, "frozen")
    x_train = cached_features(inputs, inputs.splits.train, "train")
    x_val = cached_features(inputs, inputs.splits.val, "val")
    torch.manual_seed(cfg.seed)
    head = create_head(inputs.backbone.feature_shape, inputs.num_classes, cfg.head)
    head = head.to(inputs.device)
    result = None
    if collective.is_main:  # the others wait: a head on features takes seconds
        result = _fit_head(inputs, head, x_train, x_val)
    if collective.active:
        result = share_head(inputs, head, result)
    if not has_validation(inputs):
        log.info("head: %d epochs, the last kept (no validation images)", result.epochs_run)
    else:
        log.info(
            "head: %d epochs, best %d (val loss %.4f, acc %.4f), %s",
            result.epochs_run,
            result.best_epoch,
            result.best_val_loss,
            result.best_val_accuracy,
            result.stopped,
        )
    if not result.converged and has_validation(inputs):
        log.warning(
            "the head did not converge in %d epochs (validation loss still improving); "
            "consider more --head-epochs",
            cfg.head_epochs,
        )
    return head, result


def _fit_head(inputs: TrainingInputs, head: ClassifierHead, x_train, x_val) -> PhaseResult:
    cfg = inputs.config
    y_train, y_val = labels_of(inputs.splits.train), labels_of(inputs.splits.val)
    bs = cfg.head_batch_size
    data = PhaseData(
        train=lambda epoch: tensor_batches(x_train, y_train, bs, cfg.seed + epoch),
        val=lambda: tensor_batches(x_val, y_val, 1024, None),
        steps_per_epoch=(len(y_train) + bs - 1) // bs,
    )
    stopping = stopping_rule(
        inputs, EarlyStopping(cfg.patience, min_delta=1e-4, min_rel_delta=1e-3, monitor="loss")
    )
    result = fit_phase(
        head,
        create_optimizer(head, lr=cfg.lr, weight_decay=cfg.weight_decay),
        data,
        PhaseConfig(name="head", epochs=cfg.head_epochs, schedule="constant", fast_epochs=True),
        objective(inputs, head),
        callbacks=[stopping, *inputs.callbacks],
        # features, not images: float32 on the device, and no other process takes part
        runtime=Runtime(as_compute(inputs.device)),
    )
    return kept_last(inputs, result)


def share_head(inputs: TrainingInputs, head: ClassifierHead, result: PhaseResult | None):
    """Rank 0's trained head, phase result and history rows, in every process."""
    c = inputs.runtime.collective
    head.load_state_dict(c.broadcast_tensors(head.state_dict() if c.is_main else None))
    history = stateful(inputs.callbacks).get("history")
    rows = history.rows if history is not None else []
    doc = c.broadcast_json({"result": result.to_dict(), "history": rows} if c.is_main else None)
    if history is not None:
        history.rows[:] = doc["history"]
    return PhaseResult(**doc["result"])
