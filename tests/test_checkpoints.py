"""Checkpoint files: optimizer state through safetensors without pickle, laid out
like its parameters again."""

from __future__ import annotations

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
from transferkit.freezing import create_optimizer


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


def test_checkpoint_round_trip_restores_weights_optimizer_scheduler_and_state(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = create_optimizer(model, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    ckpt = Checkpointer(tmp_path / "c")
    best = {k: v * 0 for k, v in model.state_dict().items()}
    ckpt.save("head", model, opt, sched, best, {"epoch": 1, "note": "x"})
    assert ckpt.has("head") and not ckpt.has("fine-tune")
    fresh = nn.Linear(3, 2)
    opt2 = create_optimizer(fresh, lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5**s)
    state, best2 = ckpt.load("head", fresh, opt2, sched2)
    assert state == {"epoch": 1, "note": "x"}
    assert all(torch.equal(best2[k], v) for k, v in best.items())
    assert torch.equal(fresh.weight, model.weight)
    assert sched2.last_epoch == 1 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    ckpt.clear()
    assert not (tmp_path / "c").exists()
