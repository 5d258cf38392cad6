"""Early stopping's judgement, history rows across phases, Ctrl-C as a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import problem, run_phase
from transferkit.training import (
    EarlyStopping,
    EpochEndHook,
    History,
    InputWait,
    Interruption,
    PhaseConfig,
    PhaseState,
    TrainingInterrupted,
)


def test_early_stopping_counts_epochs_since_best():
    s = EarlyStopping(patience=2)
    assert s.step(1.0, 1) and not s.step(1.0, 2) and not s.should_stop
    assert not s.step(1.5, 3) and s.should_stop and s.best_epoch == 1


def test_accuracy_monitor_prefers_accuracy_then_loss():
    s = EarlyStopping(patience=2, monitor="accuracy")
    assert s.step(1.0, 1, 0.5)
    assert not s.step(0.8, 2, 0.4)  # lower loss, worse accuracy: not better
    assert s.step(1.3, 3, 0.6)  # higher accuracy wins despite higher loss
    assert s.step(1.1, 4, 0.6)  # same accuracy, lower loss
    assert s.best_epoch == 4 and s.best_accuracy == 0.6


def test_starting_from_current_weights_can_only_keep_or_improve_them():
    """With start_from_current, the starting weights are epoch 0: a phase that only
    makes things worse ends on the weights it started with."""
    torch.manual_seed(0)
    x, y = problem()
    model = nn.Linear(4, 2)
    run_phase(model, x, y, PhaseConfig(epochs=20), callbacks=[EarlyStopping(patience=3)])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_phase(
        model,
        x,
        y,
        PhaseConfig(name="worse", epochs=3),
        callbacks=[EarlyStopping(patience=5, monitor="accuracy", start_from_current=True)],
        lr=50.0,  # wrecks the model
    )
    assert result.best_epoch == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_history_numbers_epochs_across_phases():
    torch.manual_seed(0)
    x, y = problem()
    model = nn.Linear(4, 2)
    history = History()
    run_phase(model, x, y, PhaseConfig(name="head", epochs=2), callbacks=[history])
    run_phase(model, x, y, PhaseConfig(name="fine-tune", epochs=3), callbacks=[history])
    assert [(r["phase"], r["epoch"], r["phase_epoch"]) for r in history.rows] == [
        ("head", 1, 1),
        ("head", 2, 2),
        ("fine-tune", 3, 1),
        ("fine-tune", 4, 2),
        ("fine-tune", 5, 3),
    ]


def test_ctrl_c_becomes_training_interrupted_naming_phase_and_epoch():
    torch.manual_seed(0)
    x, y = problem()

    def stop(phase, epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"interrupted in phase head, epoch 2$"):
        run_phase(
            nn.Linear(4, 2),
            x,
            y,
            PhaseConfig(epochs=5),
            callbacks=[EpochEndHook(stop), Interruption()],
        )


def test_without_the_interruption_callback_ctrl_c_propagates_as_it_is():
    torch.manual_seed(0)
    x, y = problem()

    def stop(phase, epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_phase(nn.Linear(4, 2), x, y, PhaseConfig(epochs=5), callbacks=[EpochEndHook(stop)])


def _slow_batches(x, y, wait: float):
    """The helper's four batches, each ``wait`` seconds late, like a loader that
    decodes originals."""
    import time

    def train(epoch):
        for i in range(0, len(y), 16):
            time.sleep(wait)
            yield x[i : i + 16], y[i : i + 16]

    return train


def test_history_records_how_long_each_epoch_waited_for_its_batches():
    from helpers import CE, create_optimizer
    from transferkit.training import PhaseData, fit_phase

    torch.manual_seed(0)
    x, y = problem()
    model = nn.Linear(4, 2)
    history = History()
    data = PhaseData(train=_slow_batches(x, y, 0.05), val=lambda: [(x, y)], steps_per_epoch=4)
    fit_phase(
        model, create_optimizer(model, lr=0.05), data, PhaseConfig(epochs=2), CE,
        callbacks=[history, InputWait()],
    )  # fmt: skip
    for row in history.rows:  # four batches, 50 ms each
        assert 0.2 <= row["input_seconds"] <= row["seconds"]
    fast = History()
    run_phase(model, x, y, PhaseConfig(epochs=1), callbacks=[fast, InputWait()])
    assert fast.rows[0]["input_seconds"] < 0.05


def test_a_phase_that_mostly_waited_for_images_says_so_once(caplog):
    """A fake clock: each batch waits 3 s in the loader and takes 1 s in the model."""

    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    clock = Clock()

    def batches(n):
        for _ in range(n):
            clock.t += 3.0  # the loader
            yield None

    def phase(n_batches, fast=False):
        state = PhaseState(
            config=PhaseConfig(name="fine-tune", fast_epochs=fast), model=nn.Linear(1, 1),
            optimizer=None, scheduler=None, runtime=None, validate=None,
        )  # fmt: skip
        wait = InputWait(clock=clock)
        wait.on_phase_start(state)
        for _ in wait.wrap_batches(state, batches(n_batches)):
            clock.t += 1.0  # the model
        wait.on_phase_end(state)
        return state

    with caplog.at_level("INFO", logger="transferkit"):
        state = phase(4)  # 16 s, 12 of them waiting
        assert state.input_seconds == 12.0
        phase(2)  # 8 s: too short to mention
        phase(4, fast=True)  # a head on cached features: never mentioned
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "fine-tune: 75% of the training time (12.0 of 16.0 s) went to waiting for images, "
        "not to the model: more loader processes (--workers) where cores are free, or a "
        "smaller --image-size, would speed it up"
    ]
