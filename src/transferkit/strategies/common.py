"""What both strategies share: the fit context, cached features, image loaders, and
the two phases (head on cached features, then end-to-end fine-tuning).

Under torchrun (``ctx.collective`` with several processes; docs/distributed.md):
feature extraction is sharded over the processes and rank 0 alone trains the head on
the gathered features (seconds) and hands its weights to the others, so every
process starts fine-tuning from identical weights; fine-tuning is DDP, each process
taking an equal share of every global batch."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..checkpoints import Checkpointer
from ..compute import Compute, as_compute
from ..config import FitConfig
from ..distributed import SINGLE, Collective
from ..engine import PhaseConfig, PhaseResult, run_phase
from ..errors import TransferkitError
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
    #: precision, layout, compilation (default: float32 eager on ``device``)
    compute: Compute | None = None
    #: the other torchrun processes (default: none)
    collective: Collective = SINGLE

    def __post_init__(self):
        if self.compute is None:
            self.compute = as_compute(self.device)

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


def make_loader(
    ctx: FitContext, dataset, *, shuffle: bool, seed: int = 0, batch_size=None, sampler=None
):
    from ..data import create_loader

    return create_loader(
        dataset,
        batch_size=batch_size or ctx.config.batch_size,
        shuffle=shuffle,
        workers=ctx.config.workers,
        device=ctx.device.type,
        seed=seed,
        sampler=sampler,
    )


def cached_features(
    ctx: FitContext, examples, split: str, collective: Collective | None = None
) -> torch.Tensor | None:
    """Features of ``examples`` through the frozen base, from the cache when possible.

    With several processes (``collective``, default ``ctx.collective``) all of them
    must call this; they share the extraction and only rank 0 gets the features
    (the others get ``None``)."""
    collective = ctx.collective if collective is None else collective
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
        compute=ctx.compute,
        collective=collective,
    )
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


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
    _check_processes_agree(ctx)
    freeze(ctx.backbone)
    set_bn_policy(ctx.backbone, "frozen")
    x_train = cached_features(ctx, ctx.splits.train, "train")
    x_val = cached_features(ctx, ctx.splits.val, "val")
    torch.manual_seed(cfg.seed)
    head = create_head(ctx.backbone.feature_shape, ctx.num_classes, cfg.head).to(ctx.device)
    result = None
    if ctx.collective.is_main:  # the others wait: a head on features takes seconds
        result = _fit_head(ctx, head, x_train, x_val)
    if ctx.collective.active:
        result = _share_head(ctx, head, result)
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


def _fit_head(ctx: FitContext, head: ClassifierHead, x_train, x_val) -> PhaseResult:
    cfg = ctx.config
    y_train, y_val = labels_of(ctx.splits.train), labels_of(ctx.splits.val)
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
    return run_phase(
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


def _share_head(ctx: FitContext, head: ClassifierHead, result: PhaseResult | None):
    """Rank 0's trained head, phase result and history rows, in every process."""
    c = ctx.collective
    state = c.broadcast_tensors(head.state_dict() if c.is_main else None)
    head.load_state_dict(state)
    doc = c.broadcast_json(
        {"result": result.to_dict(), "history": ctx.history} if c.is_main else None
    )
    ctx.history[:] = doc["history"]
    return PhaseResult(**doc["result"])


def _check_processes_agree(ctx: FitContext) -> None:
    """Every process must train the same thing. Each one ran the strategy advisor on
    its own; should they ever decide differently, stop with a message rather than
    hang in a collective that only some processes reach."""
    c = ctx.collective
    if not c.active:
        return
    cfg = ctx.config
    mine = [cfg.strategy, ctx.backbone.cut, cfg.image_size, cfg.unfreeze, len(ctx.splits.train)]
    main = c.broadcast_json(mine if c.is_main else None)
    if not c.all_true(main == mine):
        raise TransferkitError(
            f"torchrun processes disagree on what to train: rank 0 has {main}, rank "
            f"{c.rank} has {mine} (strategy, cut, image size, unfreeze, train images)"
        )


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
    starting best).

    ``--batch-size`` is the global batch: each of the torchrun processes takes an
    equal share, and DDP averages their gradients, so a step is the same step as in
    one process with that batch."""
    cfg, c = ctx.config, ctx.collective
    model = TransferModel(ctx.backbone, head)
    model = _sync_batchnorm(ctx, model)
    ctx.compute.prepare(model)
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
    # DDP after freezing: only what is trainable now is synchronised (R4 holds within
    # the phase, whose trainable set does not change). torch.compile goes inside DDP,
    # as PyTorch advises, on a wrapper: ``model`` itself stays eager for export.
    train_module = c.wrap(ctx.compute.maybe_compile(model), ctx.device)
    batch = c.per_process_batch(cfg.batch_size)
    train_ds = image_dataset(ctx, ctx.splits.train, train=True)
    val_ds = image_dataset(ctx, ctx.splits.val, train=False)
    sampler = c.train_sampler(train_ds, cfg.seed)
    # One loader per phase, so worker processes (the GPU default) start once and keep
    # prefetching across epochs: building one per epoch restarted them every epoch
    # (bench/fine_tune_epoch.py --workers 2: 7.0 s an epoch against 5.2 s for a plain
    # loop). The sampler reshuffles per epoch (set_epoch); worker seeds, and so the
    # augmentation, differ per process.
    train_loader = make_loader(
        ctx,
        train_ds,
        shuffle=True,
        seed=cfg.seed + 100_003 * c.rank,
        batch_size=batch,
        sampler=sampler,
    )
    val_loader = make_loader(
        ctx, val_ds, shuffle=False, batch_size=batch, sampler=c.eval_sampler(len(val_ds))
    )

    def train_batches(epoch: int):
        sampler.set_epoch(epoch)
        return train_loader

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
    if c.active:  # dropout and in-process augmentation: a different stream per process
        torch.manual_seed(cfg.seed + c.rank)
    result = run_phase(
        model,
        loss_fn=lambda z, t: head.loss(z, t, cfg.label_smoothing),
        probs_fn=head.probabilities,
        train_batches=train_batches,
        val_batches=lambda: val_loader,
        steps_per_epoch=math.ceil(len(sampler) / batch),
        optimizer=optimizer,
        cfg=phase,
        history=ctx.history,
        device=ctx.compute,
        epoch_offset=len(ctx.history),
        checkpointer=ctx.checkpointer,
        evaluate_first=True,
        on_epoch_end=(lambda e: ctx.on_epoch_end("fine-tune", e)) if ctx.on_epoch_end else None,
        train_module=train_module,
        collective=c,
    )
    freeze(ctx.backbone)  # the finished model is for inference
    return model, result


def _sync_batchnorm(ctx: FitContext, model: TransferModel) -> TransferModel:
    """``--bn train`` with several GPU processes: batch statistics over the global
    batch (SyncBatchNorm). The default ``frozen`` policy needs nothing: BN runs on its
    stored statistics. Must run before freezing, which marks the BN layers."""
    if not (ctx.collective.active and ctx.config.bn == "train"):
        return model
    if ctx.device.type != "cuda":
        log.warning(
            "--bn train on CPU processes: SyncBatchNorm needs GPUs, so each process "
            "normalises with its own share of the batch and rank 0's running statistics "
            "are kept"
        )
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
