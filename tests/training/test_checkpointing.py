"""Checkpoints as callbacks: Ctrl-C leaves the last epoch on disk, and a resumed
phase continues from it to the same end as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import problem, run_phase
from transferkit.checkpoints import Checkpointer
from transferkit.training import (
    Checkpoint,
    EarlyStopping,
    EpochEndHook,
    History,
    Interruption,
    PhaseConfig,
    ResumeFromCheckpoint,
    TrainingInterrupted,
)


def _callbacks(ckpt, history, *extra):
    return [
        ResumeFromCheckpoint(ckpt),
        EarlyStopping(patience=100),
        history,
        Checkpoint(ckpt),
        Interruption(),
        *extra,
    ]


def test_interrupt_leaves_checkpoint_and_resume_finishes_like_an_uninterrupted_run(tmp_path):
    x, y = problem()
    cfg = PhaseConfig(name="fine-tune", epochs=6)
    torch.manual_seed(0)
    straight = nn.Linear(4, 2)
    run_phase(straight, x, y, cfg, callbacks=[EarlyStopping(patience=100)])

    def interrupt(phase, epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    ckpt = Checkpointer(tmp_path / "ckpt")
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    with pytest.raises(TrainingInterrupted, match=r"saved in .*ckpt: resume with --resume"):
        run_phase(model, x, y, cfg, callbacks=_callbacks(ckpt, History(), EpochEndHook(interrupt)))
    assert ckpt.has("fine-tune")
    history = History()
    fresh = nn.Linear(4, 2)
    result = run_phase(fresh, x, y, cfg, callbacks=_callbacks(ckpt, history))
    assert result.epochs_run == 6 and result.stopped == "max epochs"
    assert [r["phase_epoch"] for r in history.rows] == [1, 2, 3, 4, 5, 6]
    for name, value in straight.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_a_finished_phase_is_not_trained_again(tmp_path):
    x, y = problem()
    cfg = PhaseConfig(name="head", epochs=3)
    ckpt = Checkpointer(tmp_path / "ckpt")
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    run_phase(model, x, y, cfg, callbacks=_callbacks(ckpt, History()))
    ran = []
    again = nn.Linear(4, 2)
    result = run_phase(
        again,
        x,
        y,
        cfg,
        callbacks=_callbacks(ckpt, History(), EpochEndHook(lambda p, e: ran.append(e))),
    )
    assert ran == [] and result.epochs_run == 3
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_ctrl_c_before_the_first_checkpoint_says_the_phase_starts_again(tmp_path):
    from transferkit.training import Callback

    class CtrlC(Callback):
        def on_batch_end(self, state, stats):
            raise KeyboardInterrupt

    x, y = problem()
    ckpt = Checkpointer(tmp_path / "ckpt")
    with pytest.raises(TrainingInterrupted, match="phase tune starts again"):
        run_phase(
            nn.Linear(4, 2),
            x,
            y,
            PhaseConfig(name="tune", epochs=3),
            callbacks=_callbacks(ckpt, History(), CtrlC()),
        )
    assert not ckpt.has("tune")
