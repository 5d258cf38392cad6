"""Training loop behaviour: early stopping with best weights restored, non-finite
loss handling, schedules, checkpoint round trip (issue 4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from transferkit.atomic import save_tensors
from transferkit.checkpoints import (
    Checkpointer,
    join_optimizer_state,
    load_optimizer_state,
    split_optimizer_state,
)
from transferkit.engine import EarlyStopping, PhaseConfig, TrainingInterrupted, run_phase
from transferkit.freezing import create_optimizer


def _problem(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y


def _run(model, x, y, history, cfg, loss_fn=None, **kw):
    loss_fn = loss_fn or nn.functional.cross_entropy
    return run_phase(
        model,
        loss_fn=loss_fn,
        probs_fn=lambda z: z.softmax(1),
        train_batches=lambda e: [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(y), 16)],
        val_batches=lambda: [(x, y)],
        steps_per_epoch=4,
        optimizer=create_optimizer(model, lr=cfg.lr),
        cfg=cfg,
        history=history,
        **kw,
    )


def test_early_stopping_counts_epochs_since_best():
    s = EarlyStopping(patience=2)
    assert s.step(1.0, 1) and not s.step(1.0, 2) and not s.should_stop
    assert not s.step(1.5, 3) and s.should_stop and s.best_epoch == 1


def test_phase_trains_records_history_and_restores_best():
    torch.manual_seed(0)
    x, y = _problem()
    model = nn.Linear(4, 2)
    history = []
    result = _run(model, x, y, history, PhaseConfig(epochs=30, lr=0.05, patience=3))
    assert result.best_val_accuracy > 0.9
    assert len(history) == result.epochs_run and history[0]["phase"] == "head"
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(history[0])
    with torch.no_grad():
        val_loss = float(nn.functional.cross_entropy(model(x), y))
    assert math.isclose(val_loss, result.best_val_loss, rel_tol=1e-5)  # best weights restored


def test_non_finite_loss_stops_phase_and_keeps_last_good_weights():
    torch.manual_seed(0)
    x, y = _problem()
    model = nn.Linear(4, 2)
    calls = {"n": 0}

    def poisoned(z, t):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(z, t)
        return loss * float("nan") if calls["n"] > 10 else loss  # NaN in epoch 3

    history = []
    result = _run(model, x, y, history, PhaseConfig(epochs=10, lr=0.05), loss_fn=poisoned)
    assert result.stopped == "non-finite loss"
    assert result.epochs_run == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_interrupt_leaves_checkpoint_and_resume_finishes(tmp_path):
    torch.manual_seed(0)
    x, y = _problem()
    model = nn.Linear(4, 2)
    ckpt = Checkpointer(tmp_path / "ckpt")
    cfg = PhaseConfig(name="fine-tune", epochs=6, lr=0.05, patience=100)

    def interrupt(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    history = []
    with pytest.raises(TrainingInterrupted, match="resume"):
        _run(model, x, y, history, cfg, checkpointer=ckpt, on_epoch_end=interrupt)
    assert ckpt.has("fine-tune")
    resumed_history = []
    fresh = nn.Linear(4, 2)
    result = _run(fresh, x, y, resumed_history, cfg, checkpointer=ckpt)
    assert result.epochs_run == 6 and result.stopped == "max epochs"
    assert [r["phase_epoch"] for r in resumed_history] == [1, 2, 3, 4, 5, 6]


def test_accuracy_monitor_prefers_accuracy_then_loss():
    s = EarlyStopping(patience=2, monitor="accuracy")
    assert s.step(1.0, 1, 0.5)
    assert not s.step(0.8, 2, 0.4)  # lower loss, worse accuracy: not better
    assert s.step(1.3, 3, 0.6)  # higher accuracy wins despite higher loss
    assert s.step(1.1, 4, 0.6)  # same accuracy, lower loss
    assert s.best_epoch == 4 and s.best_accuracy == 0.6


def test_optimizer_uses_the_fused_adam_kernel_by_default():
    opt = create_optimizer(nn.Linear(3, 2), lr=1e-3)
    assert opt.defaults["fused"] is True
    assert create_optimizer(nn.Linear(3, 2), lr=1e-3, foreach=True).defaults["fused"] in (
        None,
        False,
    )


@pytest.mark.parametrize("fused", [False, True])
def test_resumed_optimizer_matches_an_uninterrupted_one_for_nhwc_weights(tmp_path, fused):
    """Adam state saved through safetensors comes back contiguous; a channels_last
    weight must get channels_last moments back, or the fused kernel scrambles them."""
    from safetensors.torch import load_file

    def model():
        torch.manual_seed(0)
        return nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)

    xs = torch.randn(6, 2, 3, 5, 5)

    def step(m, opt, i):
        opt.zero_grad()
        m(xs[i]).pow(2).mean().backward()
        opt.step()

    m = model()
    opt = create_optimizer(m, lr=1e-2, fused=fused)
    for i in range(6):
        step(m, opt, i)
    want = m.weight.detach().clone()
    m = model()
    opt = create_optimizer(m, lr=1e-2, fused=fused)
    for i in range(3):
        step(m, opt, i)
    tensors, plain = split_optimizer_state(opt.state_dict())
    save_tensors(tmp_path / "optim.safetensors", tensors)
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    m2 = model()
    m2.load_state_dict(weights)
    opt2 = create_optimizer(m2, lr=1e-2, fused=fused)
    load_optimizer_state(
        opt2, join_optimizer_state(load_file(str(tmp_path / "optim.safetensors")), plain)
    )
    for i in range(3, 6):
        step(m2, opt2, i)
    assert torch.equal(m2.weight.detach(), want)
