"""Checkpoints as callbacks: save every epoch's training state, resume from it.

Two callbacks over one :class:`~transferkit.checkpoints.Checkpointer`, because they
act at opposite ends of a phase: :class:`ResumeFromCheckpoint` runs first at phase
start (before early stopping would evaluate a starting point), :class:`Checkpoint`
last at epoch end (after the history row exists, before user hooks that may stop
the process).

Under torchrun only rank 0 has the run directory; every process still takes part in
the resume (the others receive rank 0's weights, optimizer and scheduler state), so
every process runs :class:`ResumeFromCheckpoint`, with ``checkpointer=None`` where
there is no run directory.
"""

from __future__ import annotations

import base64
import logging

from ..checkpoints import (
    Checkpointer,
    join_optimizer_state,
    load_optimizer_state,
    split_optimizer_state,
)
from .callbacks import Callback, stateful
from .phase import PhaseResult

log = logging.getLogger("transferkit")


class ResumeFromCheckpoint(Callback):
    """At phase start, restore the phase's last checkpoint, if there is one."""

    order = 0

    def __init__(self, checkpointer: Checkpointer | None):
        self.checkpointer = checkpointer

    def on_phase_start(self, state) -> None:
        collective = state.runtime.collective
        found = self.checkpointer is not None and self.checkpointer.has(state.name)
        if not collective.broadcast_json(found):
            return
        doc = best = None
        if collective.is_main:
            doc, best = self.checkpointer.load(
                state.name, state.model, state.optimizer, state.scheduler
            )
        if collective.active:
            doc, best = _share(state, doc, best)
        _apply(state, doc, best)
        if not state.result.stopped:
            log.info("resuming phase %s after epoch %d", state.name, state.epoch)


def _apply(state, doc: dict, best: dict) -> None:
    if "rng" in doc and not state.runtime.collective.active:
        set_rng_state(doc["rng"])
    state.resumed = True
    state.epoch = doc["epoch"]
    state.result = PhaseResult(**doc["result"])
    state.best_state = best
    by_key = stateful(state.callbacks)
    for key, saved in doc.get("callbacks", {}).items():
        if key in by_key:
            by_key[key].load_state_dict(saved)


def _share(state, doc, best):
    """Rank 0's checkpoint in every process (weights, best weights, optimizer and
    scheduler state, the rest as JSON)."""
    c = state.runtime.collective
    c.broadcast_module(state.model)
    best = c.broadcast_tensors(best)
    opt_tensors, opt_plain = split_optimizer_state(state.optimizer.state_dict())
    opt_plain = c.broadcast_json(opt_plain)
    opt_tensors = c.broadcast_tensors(opt_tensors)
    sched = {k: v for k, v in state.scheduler.state_dict().items() if k != "lr_lambdas"}
    sched = c.broadcast_json(sched)
    doc = c.broadcast_json(doc)
    if not c.is_main:
        load_optimizer_state(state.optimizer, join_optimizer_state(opt_tensors, opt_plain))
        state.scheduler.load_state_dict({**state.scheduler.state_dict(), **sched})
    return doc, best


def rng_state() -> dict:
    """The random streams a training epoch draws from (dropout, augmentation), as
    JSON: restored on resume, so the epochs after it draw what they would have."""
    import random

    import numpy as np
    import torch

    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state(legacy=True)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    def tensor(text: str):
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class Checkpoint(Callback):
    """After each epoch (fast phases: when the phase ends), save what a resume needs:
    weights, best weights, optimizer and scheduler state, epoch, result and the
    state of every stateful callback. On Ctrl-C it notes where the checkpoint is."""

    order = 800

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer

    def on_epoch_end(self, state) -> None:
        if state.config.fast_epochs and not state.result.stopped:
            return
        doc = {
            "rng": rng_state(),
            "epoch": state.epoch,
            "result": state.result.to_dict(),
            "callbacks": {k: cb.state_dict() for k, cb in stateful(state.callbacks).items()},
        }
        self.checkpointer.save(
            state.name, state.model, state.optimizer, state.scheduler, state.best_state, doc
        )

    def on_interrupt(self, state) -> None:
        where = self.checkpointer.folder
        if self.checkpointer.has(state.name):
            note = f"the last finished epoch is saved in {where}: resume with --resume"
        else:
            note = (
                f"resume with --resume: phase {state.name} starts again, and what "
                f"finished before it is kept in {where}"
            )
        state.notes.append(note)
