"""One training phase: epochs until a callback stops it, best weights restored,
a non-finite loss ends the phase on the last good weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from helpers import CE, problem, run_phase
from transferkit.training import Callback, EarlyStopping, History, Objective, PhaseConfig


def test_phase_trains_records_history_and_restores_best():
    torch.manual_seed(0)
    x, y = problem()
    model = nn.Linear(4, 2)
    history = History()
    result = run_phase(
        model, x, y, PhaseConfig(epochs=30), callbacks=[EarlyStopping(patience=3), history]
    )
    assert result.best_val_accuracy > 0.9 and result.stopped in ("early stopping", "max epochs")
    assert len(history.rows) == result.epochs_run and history.rows[0]["phase"] == "head"
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(
        history.rows[0]
    )
    with torch.no_grad():
        val_loss = float(nn.functional.cross_entropy(model(x), y))
    assert math.isclose(val_loss, result.best_val_loss, rel_tol=1e-5)  # best weights restored


def test_without_callbacks_the_phase_runs_every_epoch_and_keeps_the_last_weights():
    torch.manual_seed(0)
    x, y = problem()
    model = nn.Linear(4, 2)
    result = run_phase(model, x, y, PhaseConfig(epochs=3))
    assert result.epochs_run == 3 and result.stopped == "max epochs"


def test_non_finite_loss_stops_phase_and_keeps_last_good_weights():
    torch.manual_seed(0)
    x, y = problem()
    model = nn.Linear(4, 2)
    calls = {"n": 0}

    def poisoned(z, t):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(z, t)
        return loss * float("nan") if calls["n"] > 10 else loss  # NaN in epoch 3

    result = run_phase(
        model,
        x,
        y,
        PhaseConfig(epochs=10),
        callbacks=[EarlyStopping(patience=5)],
        objective=Objective(poisoned, CE.probabilities),
    )
    assert result.stopped == "non-finite loss"
    assert result.epochs_run == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_callback_can_stop_the_phase_and_sees_every_hook_in_order():
    torch.manual_seed(0)
    x, y = problem()
    seen = []

    class Recorder(Callback):
        def on_phase_start(self, state):
            seen.append("start")

        def on_validation_end(self, state):
            seen.append(f"val{state.epoch}")

        def on_epoch_end(self, state):
            seen.append(f"end{state.epoch}")
            if state.epoch == 2:
                state.result.stopped = "enough"

        def on_phase_end(self, state):
            seen.append("stop")

    result = run_phase(nn.Linear(4, 2), x, y, PhaseConfig(epochs=10), callbacks=[Recorder()])
    assert seen == ["start", "val1", "end1", "val2", "end2", "stop"]
    assert result.epochs_run == 2 and result.stopped == "enough"


def test_callbacks_run_in_their_order():
    torch.manual_seed(0)
    x, y = problem()
    seen = []

    class Named(Callback):
        def __init__(self, name, order):
            self.name, self.order = name, order

        def on_phase_start(self, state):
            seen.append(self.name)

    run_phase(
        nn.Linear(4, 2), x, y, PhaseConfig(epochs=1), callbacks=[Named("b", 50), Named("a", 5)]
    )
    assert seen == ["a", "b"]
