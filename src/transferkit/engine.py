"""Plain training and evaluation loops (torchvision-reference style, no framework).

One phase = AdamW + a warmup/cosine (or one-cycle) schedule stepped per batch,
gradient clipping, early stopping on validation loss with the best weights restored
(R1, R2, R8). A non-finite loss stops the phase and keeps the last good weights;
Ctrl-C leaves the last epoch's checkpoint on disk and raises ``TrainingInterrupted``
so ``fit --resume`` can continue.

The same loop runs in one process or in many (torchrun, DDP): it talks to the other
processes only through a :class:`~transferkit.distributed.Collective` (validation and
training sums, the NaN check, a resumed checkpoint), whose single-process version does
nothing. Forward passes run under the :class:`~transferkit.compute.Compute`'s autocast
with batches moved non-blocking (and NHWC on a GPU); losses are computed in float32.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .checkpoints import (
    Checkpointer,
    join_optimizer_state,
    load_optimizer_state,
    split_optimizer_state,
)
from .compute import Compute, as_compute
from .distributed import SINGLE, Collective
from .errors import TransferkitError
from .progress import progress_iter

log = logging.getLogger("transferkit")
SCHEDULES = ("cosine", "onecycle", "constant")


class TrainingInterrupted(TransferkitError):
    """Ctrl-C during training; the message says how to resume."""


@dataclass
class PhaseConfig:
    """Settings of one training phase; defaults are the head phase's."""

    name: str = "head"
    epochs: int = 100
    lr: float = 1e-3
    patience: int = 5
    min_delta: float = 1e-4
    min_rel_delta: float = 1e-3
    monitor: str = "loss"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0


@dataclass
class PhaseResult:
    name: str
    epochs_run: int = 0
    best_epoch: int = 0  # 1-based within the phase
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    seconds: float = 0.0
    stopped: str = ""
    converged: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EarlyStopping:
    """Stops when the validation score has not improved for ``patience`` epochs.

    ``monitor="loss"``: an improvement must beat the best loss by ``min_rel_delta``
    (relative) plus ``min_delta`` — on easy data the loss creeps down forever, and a
    creep is convergence. ``monitor="accuracy"``: higher accuracy wins, equal accuracy
    with lower loss too; fine-tuning uses it, because a few hundred validation images
    make the loss of an increasingly confident model a poor judge of the best epoch.
    """

    patience: int
    min_delta: float = 1e-4
    min_rel_delta: float = 0.0
    monitor: str = "loss"
    best: float = math.inf
    best_accuracy: float = -math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0

    def step(self, loss: float, epoch: int, accuracy: float | None = None) -> bool:
        """Record an epoch's validation loss (and accuracy); True if it is the new best."""
        if self.monitor == "accuracy":
            acc = -math.inf if accuracy is None else accuracy
            better = acc > self.best_accuracy + 1e-12 or (
                acc >= self.best_accuracy - 1e-12 and loss < self.best - self.min_delta
            )
        else:
            better = loss < self.best * (1 - self.min_rel_delta) - self.min_delta
        if better:
            self.best, self.best_epoch, self.epochs_since_best = loss, epoch, 0
            self.best_accuracy = -math.inf if accuracy is None else accuracy
            return True
        self.epochs_since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.epochs_since_best >= self.patience


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    probabilities: torch.Tensor | None = None
    labels: torch.Tensor | None = None


@dataclass
class PhaseState:
    """What a resumed phase needs besides weights and optimizer tensors."""

    epoch: int = 0
    stopper: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def create_scheduler(optimizer, cfg: PhaseConfig, steps_per_epoch: int):
    if cfg.schedule not in SCHEDULES:
        from .errors import InputError

        raise InputError(f"schedule {cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        warmup = max(warmup, int(0.3 * total))

    def factor(step: int) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    loss_fn,
    probs_fn,
    device: str | torch.device | Compute = "cpu",
    keep: bool = False,
    collective: Collective = SINGLE,
) -> Evaluation:
    """Mean loss and accuracy over ``batches`` with the model in eval mode.

    With a multi-process ``collective`` each process passes its shard of the batches
    and gets the totals over all of them, so every process sees the same numbers and
    takes the same early-stopping decision; ``keep``'s probabilities stay per process.
    """
    compute = as_compute(device)
    was = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    all_probs, all_labels = [], []
    try:
        for x, y in batches:
            x, y = compute.to_device(x), y.to(compute.device, non_blocking=True)
            with compute.autocast():
                logits = model(x)
            logits = logits.float()
            total_loss += float(loss_fn(logits, y)) * len(y)
            probs = probs_fn(logits)
            correct += int((probs.argmax(1) == y).sum())
            n += len(y)
            if keep:
                all_probs.append(probs.float().cpu())
                all_labels.append(y.cpu())
    finally:
        model.train(was)
    total_loss, correct, n = collective.sum([total_loss, correct, n])
    return Evaluation(
        loss=total_loss / max(n, 1),
        accuracy=correct / max(n, 1),
        probabilities=torch.cat(all_probs) if keep and all_probs else None,
        labels=torch.cat(all_labels) if keep and all_labels else None,
    )


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _restore(checkpointer, collective, name, model, optimizer, scheduler):
    """Load the phase's checkpoint if there is one: ``(PhaseState, best_state)`` or
    ``None``. Only rank 0 has the checkpoint (it alone writes the run directory); the
    other processes receive its weights, optimizer and scheduler state from it."""
    found = collective.broadcast_json(checkpointer is not None and checkpointer.has(name))
    if not found:
        return None
    state = best = None
    if collective.is_main:
        state, best = checkpointer.load(name, model, optimizer, scheduler)
    if not collective.active:
        return state, best
    collective.broadcast_module(model)
    best = collective.broadcast_tensors(best)
    opt_tensors, opt_plain = split_optimizer_state(optimizer.state_dict())
    opt_plain = collective.broadcast_json(opt_plain)
    opt_tensors = collective.broadcast_tensors(opt_tensors)
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    sched = collective.broadcast_json(sched)
    doc = collective.broadcast_json(asdict(state) if state is not None else None)
    if not collective.is_main:
        load_optimizer_state(optimizer, join_optimizer_state(opt_tensors, opt_plain))
        scheduler.load_state_dict({**scheduler.state_dict(), **sched})
        state = PhaseState(**doc)
    return state, best


def _train_epoch(
    train_module, batches, optimizer, scheduler, cfg, loss_fn, probs_fn, compute, collective, live
) -> tuple[float, int, int, bool]:
    """One pass over the training batches: (loss sum, correct, count, all finite)."""
    tr_loss, tr_correct, tr_n = 0.0, 0, 0
    for x, y in batches:
        x, y = compute.to_device(x), y.to(compute.device, non_blocking=True)
        with compute.autocast():
            logits = train_module(x)
        logits = logits.float()
        loss = loss_fn(logits, y)
        # Every process must agree before anyone enters backward (DDP's gradient
        # all-reduce), or the others would wait there forever.
        if not collective.all_true(bool(torch.isfinite(loss))):
            return tr_loss, tr_correct, tr_n, False
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:  # gradients are already averaged over processes here
            nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip
            )
        optimizer.step()
        scheduler.step()
        tr_loss += float(loss.detach()) * len(y)
        tr_correct += int((probs_fn(logits.detach()).argmax(1) == y).sum())
        tr_n += len(y)
        live["text"] = f"loss {tr_loss / tr_n:.3f} acc {tr_correct / tr_n:.3f}"
    return tr_loss, tr_correct, tr_n, True


def run_phase(
    model: nn.Module,
    *,
    loss_fn: Callable,
    probs_fn: Callable,
    train_batches: Callable[[int], Iterable],
    val_batches: Callable[[], Iterable],
    steps_per_epoch: int,
    optimizer: torch.optim.Optimizer,
    cfg: PhaseConfig,
    history: list[dict],
    device: str | torch.device | Compute = "cpu",
    epoch_offset: int = 0,
    checkpointer: Checkpointer | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    evaluate_first: bool = False,
    fast_epochs: bool = False,
    train_module: nn.Module | None = None,
    collective: Collective = SINGLE,
) -> PhaseResult:
    """Train ``model`` for one phase, stopping early on validation loss, and leave the
    best weights in it. ``history`` gets one row per epoch (global epoch numbers).

    ``evaluate_first`` makes the starting weights the best to beat (epoch 0), so a
    fine-tuning phase can only ever keep or improve what the previous phase reached.
    ``fast_epochs`` (a head on cached features: milliseconds an epoch) shows one bar
    over epochs instead of one per epoch, logs epochs at DEBUG, and checkpoints only
    the finished phase.

    ``train_module`` is what training batches go through when it is not ``model``
    itself: a DDP and/or ``torch.compile`` wrapper of it. Weights, checkpoints and
    validation always use ``model``. With a multi-process ``collective``,
    ``train_batches`` and ``val_batches`` yield this process's shard; sums are
    combined so that every process logs and decides the same.
    """
    compute = as_compute(device)
    train_module = train_module if train_module is not None else model
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch)
    stopper = EarlyStopping(cfg.patience, cfg.min_delta, cfg.min_rel_delta, cfg.monitor)
    result = PhaseResult(cfg.name)
    start_epoch = 0
    best_state = _clone_state(model)
    restored = _restore(checkpointer, collective, cfg.name, model, optimizer, scheduler)
    if restored is not None:
        state, best_state = restored
        start_epoch = state.epoch
        stopper = EarlyStopping(**state.stopper) if state.stopper else stopper
        result = PhaseResult(**state.result) if state.result else result
        history[:] = state.history
        if result.stopped:  # the phase had finished: nothing left to train
            model.load_state_dict(best_state)
            return result
        log.info("resuming phase %s after epoch %d", cfg.name, start_epoch)
    elif evaluate_first:
        val = evaluate(model, val_batches(), loss_fn, probs_fn, compute, collective=collective)
        stopper.step(val.loss, 0, val.accuracy)
        result.best_val_loss, result.best_val_accuracy = val.loss, val.accuracy
        log.info("%s: starting point val loss %.4f acc %.4f", cfg.name, val.loss, val.accuracy)
    began = time.perf_counter() - result.seconds
    epoch = start_epoch
    epochs = range(start_epoch, cfg.epochs)
    if fast_epochs:
        epochs = progress_iter(
            epochs,
            total=cfg.epochs - start_epoch,
            description=cfg.name,
            unit="epoch",
            status=lambda: status["text"],
        )
    status = {"text": ""}
    live = {"text": ""}
    try:
        for epoch in epochs:
            t0 = time.perf_counter()
            train_module.train()  # BN layers keep their policy through forward pre-hooks (R3)
            batches = train_batches(epoch)
            live["text"] = ""
            desc = f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}"
            if not fast_epochs:
                batches = progress_iter(
                    batches,
                    total=steps_per_epoch,
                    description=desc,
                    unit="batch",
                    status=lambda: live["text"],
                )
            tr_loss, tr_correct, tr_n, finite = _train_epoch(
                train_module,
                batches,
                optimizer,
                scheduler,
                cfg,
                loss_fn,
                probs_fn,
                compute,
                collective,
                live,
            )
            if not finite:
                log.error(
                    "phase %s: the loss became NaN/inf in epoch %d; stopping the phase "
                    "and keeping the last good weights (try a lower learning rate)",
                    cfg.name,
                    epoch + 1,
                )
                result.stopped = "non-finite loss"
                break
            tr_loss, tr_correct, tr_n = collective.sum([tr_loss, tr_correct, tr_n])
            val = evaluate(model, val_batches(), loss_fn, probs_fn, compute, collective=collective)
            improved = stopper.step(val.loss, epoch + 1, val.accuracy)
            if improved:
                best_state = _clone_state(model)
                result.best_epoch, result.best_val_loss = epoch + 1, val.loss
                result.best_val_accuracy = val.accuracy
            row = {
                "phase": cfg.name,
                "epoch": epoch_offset + epoch + 1,
                "phase_epoch": epoch + 1,
                "train_loss": tr_loss / max(tr_n, 1),
                "train_acc": tr_correct / max(tr_n, 1),
                "val_loss": val.loss,
                "val_acc": val.accuracy,
                "lr": max(g["lr"] for g in optimizer.param_groups),
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            status["text"] = f"val loss {val.loss:.4f} acc {val.accuracy:.3f}"
            log.log(
                logging.DEBUG if fast_epochs else logging.INFO,
                "%s epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s",
                cfg.name,
                epoch + 1,
                row["train_loss"],
                row["train_acc"],
                val.loss,
                val.accuracy,
                " *" if improved else "",
            )
            result.epochs_run = epoch + 1
            result.seconds = time.perf_counter() - began
            if stopper.should_stop:
                result.stopped, result.converged = "early stopping", True
            elif epoch + 1 == cfg.epochs:
                result.stopped = "max epochs"
            if checkpointer is not None and (result.stopped or not fast_epochs):
                checkpointer.save(
                    cfg.name,
                    model,
                    optimizer,
                    scheduler,
                    best_state,
                    PhaseState(epoch + 1, asdict(stopper), result.to_dict(), list(history)),
                )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
            if result.stopped:
                break
    except KeyboardInterrupt:
        where = checkpointer.folder if checkpointer is not None else None
        raise TrainingInterrupted(
            f"interrupted in phase {cfg.name}, epoch {epoch + 1}"
            + (
                f"; the last finished epoch is saved in {where}: resume with --resume"
                if where
                else ""
            )
        ) from None
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - began
    return result
