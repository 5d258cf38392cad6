"""What both strategies share: the fit context, cached features, image loaders, and
the two phases (head on cached features, then end-to-end fine-tuning)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checkpoints import Checkpointer
from ..config import FitConfig
from ..engine import PhaseConfig, PhaseResult, run_phase
from ..features import FeatureCache, representation_for
from ..freezing import create_optimizer, freeze, set_bn_policy, unfreeze
from ..heads import ClassifierHead, TransferModel, create_head

log = logging.getLogger("transferkit")


@dataclass
class FitContext:
    """Everything a strategy needs; built by the estimator."""

    config: FitConfig
    backbone: object  # transferkit.backbones.Backbone
    splits: object  # transferkit.data.DatasetSplits
    device: torch.device
    cache: FeatureCache
    checkpointer: Checkpointer | None = None
    history: list[dict] = field(default_factory=list)
    on_epoch_end: object = None  # test hook: callable(phase, epoch)

    @property
    def num_classes(self) -> int:
        return len(self.splits.classes)


@dataclass
class StrategyResult:
    model: TransferModel
    phases: list[PhaseResult]
    #: the base stayed frozen: the final model's predictions can use cached features
    frozen_base: bool = True
    #: ``auto``'s measured decision (strategies/auto.py), else None
    decision: object = None


def _transform(ctx: FitContext, train: bool):
    from ..data import AugmentConfig, create_transform

    augment = AugmentConfig(enabled=train and ctx.config.augment)
    return create_transform(
        ctx.backbone.data_config, train=train, image_size=ctx.config.image_size, augment=augment
    )


def image_dataset(ctx: FitContext, examples, train: bool):
    from ..data import ImageDataset

    return ImageDataset(examples, _transform(ctx, train), channels=ctx.backbone.input_size[0])


def make_loader(ctx: FitContext, dataset, *, shuffle: bool, seed: int = 0, batch_size=None):
    from ..data import create_loader

    return create_loader(
        dataset,
        batch_size=batch_size or ctx.config.batch_size,
        shuffle=shuffle,
        workers=ctx.config.workers,
        device=ctx.device.type,
        seed=seed,
    )


def cached_features(ctx: FitContext, examples, split: str) -> torch.Tensor:
    """Features of ``examples`` through the frozen base, from the cache when possible."""
    if not examples:
        return torch.empty(0)
    dataset = image_dataset(ctx, examples, train=False)
    array = ctx.cache.get(
        ctx.backbone,
        dataset,
        [e.digest for e in examples],
        data_config=ctx.backbone.data_config,
        image_size=ctx.config.image_size,
        representation=representation_for(ctx.config.head.pooling),
        batch_size=max(ctx.config.batch_size, 64),
        device=ctx.device,
        loader_factory=lambda ds, bs: make_loader(ctx, ds, shuffle=False, batch_size=bs),
        description=f"features ({split})",
    )
    return torch.from_numpy(np.ascontiguousarray(array))


def labels_of(examples) -> torch.Tensor:
    return torch.tensor([e.label for e in examples], dtype=torch.long)


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None):
    order = torch.arange(len(y))
    if seed is not None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def train_head(ctx: FitContext) -> tuple[ClassifierHead, PhaseResult]:
    """Phase 1 (R1, R5): the base frozen and run once; the head trains on cached
    features until validation loss stops improving, best weights restored."""
    cfg = ctx.config
    freeze(ctx.backbone)
    set_bn_policy(ctx.backbone, "frozen")
    x_train = cached_features(ctx, ctx.splits.train, "train")
    x_val = cached_features(ctx, ctx.splits.val, "val")
    y_train, y_val = labels_of(ctx.splits.train), labels_of(ctx.splits.val)
    torch.manual_seed(cfg.seed)
    head = create_head(ctx.backbone.feature_shape, ctx.num_classes, cfg.head).to(ctx.device)
    optimizer = create_optimizer(head, lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = cfg.head_batch_size
    phase = PhaseConfig(
        name="head",
        epochs=cfg.epochs,
        lr=cfg.lr,
        patience=cfg.patience,
        weight_decay=cfg.weight_decay,
        schedule="constant",
        label_smoothing=cfg.label_smoothing,
    )
    result = run_phase(
        head,
        loss_fn=lambda z, t: head.loss(z, t, cfg.label_smoothing),
        probs_fn=head.probabilities,
        train_batches=lambda epoch: _tensor_batches(x_train, y_train, bs, cfg.seed + epoch),
        val_batches=lambda: _tensor_batches(x_val, y_val, 1024, None),
        steps_per_epoch=(len(y_train) + bs - 1) // bs,
        optimizer=optimizer,
        cfg=phase,
        history=ctx.history,
        device=ctx.device,
        checkpointer=ctx.checkpointer,
        on_epoch_end=(lambda e: ctx.on_epoch_end("head", e)) if ctx.on_epoch_end else None,
        fast_epochs=True,
    )
    log.info(
        "head: %d epochs, best %d (val loss %.4f, acc %.4f), %s",
        result.epochs_run,
        result.best_epoch,
        result.best_val_loss,
        result.best_val_accuracy,
        result.stopped,
    )
    if not result.converged:
        log.warning(
            "the head did not converge in %d epochs (validation loss still improving); "
            "consider more --epochs",
            cfg.epochs,
        )
    return head, result


def _fine_tune_groups(ctx: FitContext, model: TransferModel):
    """One optimizer group per backbone block (layer-wise LR decay from the top) and
    one for the head; groups hold only what is trainable at each step (R4)."""
    cfg = ctx.config
    blocks = ctx.backbone.blocks
    decay = cfg.layer_decay or 1.0
    groups = [
        (name, list(group.parameters()), cfg.fine_tune_lr * decay ** (len(blocks) - i))
        for i, (name, group) in enumerate(blocks)
    ]
    groups.append(("head", list(model.head.parameters()), cfg.fine_tune_lr))
    return groups


def fine_tune(ctx: FitContext, head: ClassifierHead) -> tuple[TransferModel, PhaseResult]:
    """Phase 2 (R2-R4): unfreeze all or the top whole blocks, train end-to-end with
    augmentation at a learning rate 10-100x below the head's, BN per policy, early
    stopping; never ends worse on validation than phase 1 (its weights are the
    starting best)."""
    cfg = ctx.config
    model = TransferModel(ctx.backbone, head).to(ctx.device)
    freeze(ctx.backbone)
    top = cfg.unfreeze_top()
    if top is None:
        unfreeze(ctx.backbone)
        unfrozen = ["all blocks"]
    else:
        unfrozen = unfreeze(ctx.backbone, top=top)
    set_bn_policy(ctx.backbone, cfg.bn)
    log.info(
        "fine-tuning: unfrozen %s, BN %s, lr %g", ", ".join(unfrozen), cfg.bn, cfg.fine_tune_lr
    )
    optimizer = create_optimizer(
        model,
        lr=cfg.fine_tune_lr,
        groups=_fine_tune_groups(ctx, model),
        weight_decay=cfg.weight_decay,
    )
    train_ds = image_dataset(ctx, ctx.splits.train, train=True)
    val_ds = image_dataset(ctx, ctx.splits.val, train=False)
    steps = (len(train_ds) + cfg.batch_size - 1) // cfg.batch_size
    phase = PhaseConfig(
        name="fine-tune",
        epochs=cfg.fine_tune_epochs,
        lr=cfg.fine_tune_lr,
        patience=cfg.fine_tune_patience,
        weight_decay=cfg.weight_decay,
        schedule=cfg.schedule,
        warmup_epochs=0.5,
        label_smoothing=cfg.label_smoothing,
        monitor="accuracy",
    )
    result = run_phase(
        model,
        loss_fn=lambda z, t: head.loss(z, t, cfg.label_smoothing),
        probs_fn=head.probabilities,
        train_batches=lambda epoch: make_loader(ctx, train_ds, shuffle=True, seed=cfg.seed + epoch),
        val_batches=lambda: make_loader(ctx, val_ds, shuffle=False),
        steps_per_epoch=steps,
        optimizer=optimizer,
        cfg=phase,
        history=ctx.history,
        device=ctx.device,
        epoch_offset=len(ctx.history),
        checkpointer=ctx.checkpointer,
        evaluate_first=True,
        on_epoch_end=(lambda e: ctx.on_epoch_end("fine-tune", e)) if ctx.on_epoch_end else None,
    )
    freeze(ctx.backbone)  # the finished model is for inference
    return model, result
