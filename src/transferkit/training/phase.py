"""One training phase: the epochs of a model with one optimizer and one schedule.

:func:`fit_phase` is deliberately short: train one epoch, validate, let the callbacks
judge and record, repeat. Everything else a phase needs is a callback
(:mod:`~transferkit.training.callbacks`): early stopping with the best weights
restored, history rows, progress, checkpoints and resume, Ctrl-C.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .callbacks import CallbackList
from .loop import (
    EpochStats,
    Evaluation,
    Objective,
    Runtime,
    create_scheduler,
    evaluate,
    train_one_epoch,
)

log = logging.getLogger("transferkit")


@dataclass(frozen=True)
class PhaseConfig:
    """How one phase runs. Learning rates and weight decay belong to the optimizer,
    stopping rules to the :class:`~transferkit.training.callbacks.EarlyStopping`
    callback; this is what the loop itself needs.

    Attributes:
        name: ``"head"``, ``"fine-tune"``, ... (history rows and checkpoints use it).
        epochs: the most epochs the phase may run.
        schedule: ``cosine``, ``onecycle`` or ``constant``, stepped per batch.
        warmup_epochs: linear warmup before the cosine.
        grad_clip: gradient-norm clip (``None``: no clipping).
        fast_epochs: epochs take milliseconds (a head on cached features): one
            progress bar over epochs, epoch lines at DEBUG, a checkpoint only when
            the phase ends.
    """

    name: str = "head"
    epochs: int = 100
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    grad_clip: float | None = 1.0
    fast_epochs: bool = False


@dataclass
class PhaseResult:
    """How a phase went; goes to ``metrics.json`` under ``phases``."""

    name: str
    epochs_run: int = 0
    best_epoch: int = 0  # 1-based within the phase; 0: the starting weights
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    seconds: float = 0.0
    stopped: str = ""
    converged: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PhaseData:
    """The batches of a phase: ``train(epoch)`` gives that epoch's training batches
    (reshuffled per epoch), ``val()`` the validation batches."""

    train: Callable[[int], Iterable]
    val: Callable[[], Iterable]
    steps_per_epoch: int


@dataclass
class PhaseState:
    """What callbacks see of a running phase, and may change.

    ``epoch`` counts finished epochs; ``current_epoch`` is the one running (1-based).
    ``best_state`` holds the weights the phase ends with (early stopping keeps it);
    ``result.stopped`` set by a callback ends the phase after this epoch.
    """

    config: PhaseConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    runtime: Runtime
    validate: Callable[[], Evaluation]
    callbacks: Sequence = ()
    result: PhaseResult = None  # type: ignore[assignment]
    epoch: int = 0
    current_epoch: int = 0
    resumed: bool = False
    best_state: dict | None = None
    improved: bool = False
    train: EpochStats | None = None
    val: Evaluation | None = None
    epoch_seconds: float = 0.0
    input_seconds: float = 0.0  # of this epoch's training, waiting for batches (InputWait)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.result is None:
            self.result = PhaseResult(self.config.name)

    @property
    def name(self) -> str:
        return self.config.name


def fit_phase(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: PhaseData,
    config: PhaseConfig,
    objective: Objective,
    *,
    callbacks: Sequence = (),
    runtime: Runtime | None = None,
    train_module: nn.Module | None = None,
) -> PhaseResult:
    """Train ``model`` for one phase and return how it went.

    ``train_module`` is what training batches go through when it is not ``model``
    itself (a DDP and/or ``torch.compile`` wrapper); validation, weights and
    checkpoints always use ``model``. With a multi-process ``runtime.collective`` the
    batches are this process's shard and every sum is combined, so every process
    logs and decides the same.
    """
    runtime = runtime or Runtime()
    cbs = CallbackList(callbacks)
    state = PhaseState(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=create_scheduler(
            optimizer, config.schedule, config.epochs, data.steps_per_epoch, config.warmup_epochs
        ),
        runtime=runtime,
        validate=lambda: evaluate(model, data.val(), objective, runtime=runtime),
        callbacks=cbs.callbacks,
    )
    train_module = train_module if train_module is not None else model
    try:
        cbs.on_phase_start(state)
        began = time.perf_counter() - state.result.seconds
        for epoch in cbs.wrap_epochs(state, range(state.epoch, config.epochs)):
            if state.result.stopped:
                break
            if not _run_epoch(state, epoch, train_module, data, objective, cbs):
                break
            state.result.seconds = time.perf_counter() - began
            cbs.on_epoch_end(state)
    except KeyboardInterrupt:
        cbs.on_interrupt(state)
        raise
    cbs.on_phase_end(state)
    state.result.seconds = time.perf_counter() - began
    return state.result


def _run_epoch(state: PhaseState, epoch: int, train_module, data, objective, cbs) -> bool:
    """Train and validate one epoch, then let the callbacks judge; False when the
    loss became NaN or infinite (the phase ends on the last good weights)."""
    t0 = time.perf_counter()
    state.current_epoch = epoch + 1
    train_module.train()  # BN layers keep their policy through forward pre-hooks
    stats = train_one_epoch(
        train_module,
        cbs.wrap_batches(state, data.train(epoch)),
        state.optimizer,
        state.scheduler,
        objective,
        runtime=state.runtime,
        grad_clip=state.config.grad_clip,
        on_batch=lambda s: cbs.on_batch_end(state, s),
    )
    if not stats.finite:
        log.error(
            "phase %s: the loss became NaN/inf in epoch %d; stopping the phase and "
            "keeping the last good weights (try a lower learning rate)",
            state.name,
            epoch + 1,
        )
        state.result.stopped = "non-finite loss"
        return False
    sums = state.runtime.collective.sum([stats.loss_sum, stats.correct, stats.count])
    state.train = EpochStats(sums[0], int(sums[1]), int(sums[2]))
    state.val = state.validate()
    state.epoch = state.result.epochs_run = epoch + 1
    state.epoch_seconds = time.perf_counter() - t0
    cbs.on_validation_end(state)
    if not state.result.stopped and state.epoch == state.config.epochs:
        state.result.stopped = "max epochs"
    return True
