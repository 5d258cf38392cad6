"""What happens around the loop: early stopping, history, progress, Ctrl-C, hooks.

A callback is an object with any of these methods, each given the running phase's
:class:`~transferkit.training.phase.PhaseState`:

- ``on_phase_start(state)``: before the first epoch (resume restores here);
- ``wrap_epochs(state, epochs)`` / ``wrap_batches(state, batches)``: return the
  iterable to use instead (progress bars);
- ``on_batch_end(state, stats)``: after each training batch, with the running sums;
- ``on_validation_end(state)``: after an epoch's validation, to judge it (early
  stopping marks ``state.improved``, keeps ``state.best_state`` and may set
  ``state.result.stopped``);
- ``on_epoch_end(state)``: after judging, to record (history, log, checkpoint);
- ``on_phase_end(state)``: after the last epoch;
- ``on_interrupt(state)``: on Ctrl-C, before it propagates.

Callbacks run in order of their ``order`` attribute (default 100; ties keep the
given order). A callback that must survive ``--resume`` has ``state_key`` and
``state_dict()``/``load_state_dict()`` (JSON-able), which checkpoints save.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..errors import TransferkitError
from ..progress import Estimate, Tracker, duration, progress_iter

log = logging.getLogger("transferkit")


class TrainingInterrupted(TransferkitError):
    """Ctrl-C during training; the message says how to resume."""


class Callback:
    """Base class with every hook doing nothing; subclass and override what you need."""

    order = 100

    def on_phase_start(self, state) -> None: ...
    def wrap_epochs(self, state, epochs: Iterable) -> Iterable:
        return epochs

    def wrap_batches(self, state, batches: Iterable) -> Iterable:
        return batches

    def on_batch_end(self, state, stats) -> None: ...
    def on_validation_end(self, state) -> None: ...
    def on_epoch_end(self, state) -> None: ...
    def on_phase_end(self, state) -> None: ...
    def on_interrupt(self, state) -> None: ...


class CallbackList:
    """Callbacks in ``order``; calls a hook on each one that has it."""

    def __init__(self, callbacks: Iterable = ()):
        self.callbacks = sorted(callbacks, key=lambda cb: getattr(cb, "order", 100))

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(*args)

    def on_phase_start(self, state) -> None:
        self._call("on_phase_start", state)

    def on_batch_end(self, state, stats) -> None:
        self._call("on_batch_end", state, stats)

    def on_validation_end(self, state) -> None:
        self._call("on_validation_end", state)

    def on_epoch_end(self, state) -> None:
        self._call("on_epoch_end", state)

    def on_phase_end(self, state) -> None:
        self._call("on_phase_end", state)

    def on_interrupt(self, state) -> None:
        self._call("on_interrupt", state)

    def wrap_epochs(self, state, epochs: Iterable) -> Iterable:
        for cb in self.callbacks:
            if hasattr(cb, "wrap_epochs"):
                epochs = cb.wrap_epochs(state, epochs)
        return epochs

    def wrap_batches(self, state, batches: Iterable) -> Iterable:
        for cb in self.callbacks:
            if hasattr(cb, "wrap_batches"):
                batches = cb.wrap_batches(state, batches)
        return batches


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's weights and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class EarlyStopping(Callback):
    """Stops when validation has not improved for ``patience`` epochs, and ends the
    phase on the best epoch's weights.

    ``monitor="loss"``: an improvement must beat the best loss by ``min_rel_delta``
    (relative) plus ``min_delta``; on easy data the loss creeps down forever, and a
    creep is convergence. ``monitor="accuracy"``: higher accuracy wins, equal accuracy
    with lower loss too; fine-tuning uses it, because a few hundred validation images
    make the loss of an increasingly confident model a poor judge of the best epoch.
    ``start_from_current``: the weights the phase starts with are epoch 0, the best to
    beat, so a fine-tuning phase can only keep or improve what the phase before it
    reached.
    """

    patience: int
    min_delta: float = 1e-4
    min_rel_delta: float = 0.0
    monitor: str = "loss"
    start_from_current: bool = False
    best: float = math.inf
    best_accuracy: float = -math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0
    order = 10
    state_key = "early_stopping"

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

    def on_phase_start(self, state) -> None:
        if state.resumed:
            return
        self.reset()
        state.best_state = clone_state(state.model)
        if self.start_from_current:
            val = state.validate()
            self.step(val.loss, 0, val.accuracy)
            state.result.best_val_loss, state.result.best_val_accuracy = val.loss, val.accuracy
            log.info(
                "%s: starting point val loss %.4f acc %.4f", state.name, val.loss, val.accuracy
            )

    def on_validation_end(self, state) -> None:
        val = state.val
        state.improved = self.step(val.loss, state.epoch, val.accuracy)
        if state.improved:
            state.best_state = clone_state(state.model)
            state.result.best_epoch, state.result.best_val_loss = state.epoch, val.loss
            state.result.best_val_accuracy = val.accuracy
        if self.should_stop:
            state.result.stopped, state.result.converged = "early stopping", True

    def on_phase_end(self, state) -> None:
        if state.best_state is not None:
            state.model.load_state_dict(state.best_state)

    def reset(self) -> None:
        self.best, self.best_accuracy = math.inf, -math.inf
        self.best_epoch = self.epochs_since_best = 0

    def state_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in _STOPPER_STATE}

    def load_state_dict(self, doc: dict) -> None:
        for k in _STOPPER_STATE:
            if k in doc:
                setattr(self, k, doc[k])


_STOPPER_STATE = ("best", "best_accuracy", "best_epoch", "epochs_since_best")


@dataclass
class History(Callback):
    """One row per epoch over every phase of a fit (``history.csv``, the curves).

    ``epoch`` numbers run on across phases; ``phase_epoch`` restarts in each."""

    rows: list[dict] = field(default_factory=list)
    order = 20
    state_key = "history"

    def on_epoch_end(self, state) -> None:
        offset = sum(1 for r in self.rows if r["phase"] != state.name)
        self.rows.append(
            {
                "phase": state.name,
                "epoch": offset + state.epoch,
                "phase_epoch": state.epoch,
                "train_loss": state.train.loss,
                "train_acc": state.train.accuracy,
                "val_loss": state.val.loss,
                "val_acc": state.val.accuracy,
                "lr": max(g["lr"] for g in state.optimizer.param_groups),
                "seconds": state.epoch_seconds,
                "input_seconds": state.input_seconds,
            }
        )

    def state_dict(self) -> dict:
        return {"rows": list(self.rows)}

    def load_state_dict(self, doc: dict) -> None:
        self.rows[:] = doc.get("rows", [])


class InputWait(Callback):
    """Times how long each epoch's training loop waits for its next batch
    (``state.input_seconds``; ``history.csv``'s ``input_seconds``), and says once,
    at the end of a phase of at least ``min_seconds``, when input took more than
    ``warn_share`` of its training time: the loader, not the model, set the pace.

    It wraps the loader itself (lowest ``order``), so the wait is the decode,
    transform and collate of each batch, or the wait for loader processes that
    have not kept up; time spent on the model is not counted."""

    order = 0
    warn_share = 0.25
    min_seconds = 10.0

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.phase_input = self.phase_train = 0.0

    def on_phase_start(self, state) -> None:
        self.phase_input = self.phase_train = 0.0

    def wrap_batches(self, state, batches: Iterable) -> Iterable:
        state.input_seconds = 0.0
        timed = _TimedBatches(self, state, batches)
        return timed if hasattr(batches, "__len__") else iter(timed)

    def on_phase_end(self, state) -> None:
        if state.config.fast_epochs or self.phase_train < self.min_seconds:
            return
        share = self.phase_input / self.phase_train
        if share > self.warn_share:
            log.info(
                "%s: %.0f%% of the training time (%.1f of %.1f s) went to waiting for "
                "images, not to the model: more loader processes (--workers) where cores "
                "are free, or a smaller --image-size, would speed it up",
                state.name,
                100 * share,
                self.phase_input,
                self.phase_train,
            )


@dataclass
class _TimedBatches:
    """``batches`` with the time spent in each ``next`` added to
    ``state.input_seconds``; keeps ``len`` (the progress bar needs it)."""

    owner: InputWait
    state: object
    batches: Iterable

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        clock, state = self.owner.clock, self.state
        it = iter(self.batches)
        began = clock()
        try:
            while True:
                t0 = clock()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                state.input_seconds += clock() - t0
                yield batch
        finally:
            self.owner.phase_input += state.input_seconds
            self.owner.phase_train += clock() - began


class ProgressReport(Callback):
    """Progress on a terminal (plain log lines elsewhere) and one log line per epoch.

    A fast phase (a head on cached features) gets one bar over its epochs, and its
    epoch lines go to DEBUG (train.log keeps them). A slow phase gets one bar over
    every batch of all its epochs, so the ETA is the phase's, not the epoch's; and
    when its first batches say it will take over a minute, a line says how long,
    before the wait: ``fine-tune: ~6 min for up to 15 epochs (estimated from the
    first 5 batches)``. ``clock``: the time source (tests pass a fake one)."""

    order = 30
    announce_after = 60.0  # seconds: shorter phases are not announced

    def __init__(self, clock=time.perf_counter, sample_batches: int = 5):
        self.clock, self.sample_batches = clock, sample_batches
        self.live = ""
        self.epoch_status = ""
        self.tracker: Tracker | None = None
        self.estimate: Estimate | None = None

    def on_phase_start(self, state) -> None:
        self._close()

    def wrap_epochs(self, state, epochs: Iterable) -> Iterable:
        if not state.config.fast_epochs or state.result.stopped:  # resumed, finished
            return epochs
        return progress_iter(
            epochs,
            total=len(epochs),
            description=state.name,
            unit="epoch",
            status=lambda: self.epoch_status,
        )

    def wrap_batches(self, state, batches: Iterable) -> Iterable:
        self.live = ""
        if state.config.fast_epochs or not hasattr(batches, "__len__"):
            return batches
        if self.tracker is None:  # the phase's first epoch (after a resume: the next)
            total = len(batches) * (state.config.epochs - state.epoch)
            self.tracker = Tracker(total, state.name, unit="batch", clock=self.clock)
            self.estimate = Estimate(total, self.sample_batches, self.clock)
        return self._tracked(state, batches)

    def _tracked(self, state, batches: Iterable) -> Iterator:
        description = f"{state.name} epoch {state.current_epoch}/{state.config.epochs}"
        for batch in batches:
            yield batch
            self.tracker.advance(self.live, description)
            seconds = self.estimate.step()
            if seconds is not None and seconds > self.announce_after:
                log.info(
                    "%s: ~%s for up to %d epochs (estimated from the first %d batches)",
                    state.name,
                    duration(seconds),
                    state.config.epochs - state.epoch,
                    self.estimate.sample,
                )

    def on_batch_end(self, state, stats) -> None:
        self.live = f"loss {stats.loss:.3f} acc {stats.accuracy:.3f}"

    def on_epoch_end(self, state) -> None:
        val = state.val
        self.epoch_status = f"val loss {val.loss:.4f} acc {val.accuracy:.3f}"
        log.log(
            logging.DEBUG if state.config.fast_epochs else logging.INFO,
            "%s epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s",
            state.name,
            state.epoch,
            state.train.loss,
            state.train.accuracy,
            val.loss,
            val.accuracy,
            " *" if state.improved else "",
        )

    def on_phase_end(self, state) -> None:
        self._close()

    def on_interrupt(self, state) -> None:
        self._close()

    def _close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
        self.tracker = self.estimate = None


class Interruption(Callback):
    """Turns Ctrl-C into :class:`TrainingInterrupted`, whose message says where the
    phase stopped and what the other callbacks noted (where the checkpoint is)."""

    order = 1000

    def on_interrupt(self, state) -> None:
        message = f"interrupted in phase {state.name}, epoch {max(state.current_epoch, 1)}"
        raise TrainingInterrupted("; ".join([message, *state.notes])) from None


class EpochEndHook(Callback):
    """Calls ``fn(phase_name, epoch)`` after each epoch is recorded (and checkpointed):
    a light way for tests and notebooks to look inside a fit."""

    order = 900

    def __init__(self, fn: Callable[[str, int], None]):
        self.fn = fn

    def on_epoch_end(self, state) -> None:
        self.fn(state.name, state.epoch)


def stateful(callbacks: Sequence) -> dict:
    """The callbacks that survive a resume, by their ``state_key``."""
    return {cb.state_key: cb for cb in callbacks if getattr(cb, "state_key", None)}
