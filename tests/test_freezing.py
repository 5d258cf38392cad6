"""Freezing, Keras-style weight counts, BatchNorm policies and optimizer groups: the
freezing examples of the classic Keras tutorials, through transferkit's API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from transferkit import InputError, create_optimizer, freeze, set_bn_policy, summary, unfreeze


def test_dense_layer_has_two_weights_both_trainable_then_frozen():
    layer = nn.Linear(4, 3)
    s = summary(layer)
    assert (s.weights, s.trainable_weights, s.non_trainable_weights) == (2, 2, 0)
    freeze(layer)
    s = summary(layer)
    assert (s.weights, s.trainable_weights, s.non_trainable_weights) == (2, 0, 2)
    assert s.params == 15 and s.non_trainable_params == 15


def test_batchnorm_has_two_trainable_and_two_non_trainable_weights():
    s = summary(nn.BatchNorm2d(5))
    assert (s.weights, s.trainable_weights, s.non_trainable_weights) == (4, 2, 2)
    assert (s.trainable_params, s.non_trainable_params) == (10, 10)


def test_frozen_layer_is_bit_identical_after_training_while_unfrozen_layer_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    freeze(model[0])
    before_frozen = model[0].weight.clone()
    before_free = model[2].weight.clone()
    opt = create_optimizer(model, lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(
            model(torch.randn(16, 4)), torch.randint(0, 2, (16,))
        ).backward()
        opt.step()
    assert torch.equal(model[0].weight, before_frozen)
    assert not torch.equal(model[2].weight, before_free)


def test_freezing_outer_model_freezes_inner_model_recursively():
    inner = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    outer = nn.Sequential(inner, nn.Linear(3, 2))
    freeze(outer)
    assert all(not p.requires_grad for p in inner.parameters())
    assert summary(inner).trainable_weights == 0
    assert summary(outer).non_trainable_weights == 2 + 4 + 2


def test_bn_frozen_policy_keeps_running_stats_in_train_mode(tiny_net):
    set_bn_policy(tiny_net, "frozen")
    tiny_net.train()
    stats = {k: v.clone() for k, v in tiny_net.state_dict().items() if "running" in k}
    opt = create_optimizer(tiny_net, lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        tiny_net(torch.randn(8, 3, 16, 16) * 3 + 1).sum().backward()
        opt.step()
    for k, v in stats.items():
        assert torch.equal(tiny_net.state_dict()[k], v), k
    # The affine parameters still trained: frozen BN statistics, not frozen BN weights.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_net.stem_bn.parameters())


def test_bn_train_policy_updates_running_stats(tiny_net):
    set_bn_policy(tiny_net, "train")
    tiny_net.train()
    before = tiny_net.stem_bn.running_mean.clone()
    tiny_net(torch.randn(8, 3, 16, 16) + 2)
    assert not torch.equal(tiny_net.stem_bn.running_mean, before)


def test_frozen_bn_stays_in_inference_mode_even_with_train_policy(tiny_net):
    freeze(tiny_net)
    set_bn_policy(tiny_net, "train")
    tiny_net.train()
    before = tiny_net.stem_bn.running_mean.clone()
    tiny_net(torch.randn(8, 3, 16, 16) + 2)
    assert torch.equal(tiny_net.stem_bn.running_mean, before)


def test_bad_bn_policy_names_the_options(tiny_net):
    with pytest.raises(InputError, match="frozen, train"):
        set_bn_policy(tiny_net, "sometimes")


def test_unfreezing_after_optimizer_was_built_makes_parameters_train():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    freeze(model[0])
    opt = create_optimizer(model, lr=0.1)
    unfreeze(model[0])  # no "recompile": the next step must see it
    before = model[0].weight.clone()
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight, before)
    # and freezing again takes it back out
    freeze(model[0])
    before = model[0].weight.clone()
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).sum().backward()
    opt.step()
    assert torch.equal(model[0].weight, before)


def test_optimizer_groups_keep_count_and_lr_for_schedulers():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    freeze(model)
    opt = create_optimizer(
        model,
        groups=[
            ("base", list(model[0].parameters()), 1e-4),
            ("head", list(model[1].parameters()), 1e-2),
        ],
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    unfreeze(model[1])
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    assert [g["name"] for g in opt.param_groups] == ["base", "head"]
    assert len(opt.param_groups[0]["params"]) == 0 and len(opt.param_groups[1]["params"]) == 2
    assert opt.param_groups[0]["lr"] < opt.param_groups[1]["lr"]


def test_unfreeze_top_blocks_and_names(tiny_net):
    blocks = [(f"blocks.{i}", b) for i, b in enumerate(tiny_net.blocks)]
    freeze(tiny_net)
    assert unfreeze(tiny_net, top=1, blocks=blocks) == ["blocks.2"]
    assert all(p.requires_grad for p in tiny_net.blocks[2].parameters())
    assert not any(p.requires_grad for p in tiny_net.blocks[1].parameters())
    unfreeze(tiny_net, names=["fc"])
    assert tiny_net.fc.weight.requires_grad
    with pytest.raises(InputError, match="no layer named"):
        unfreeze(tiny_net, names=["nope"])
    with pytest.raises(InputError, match="between 1 and 3"):
        unfreeze(tiny_net, top=4, blocks=blocks)


def test_optimizer_uses_the_fused_adam_kernel_by_default():
    opt = create_optimizer(nn.Linear(3, 2), lr=1e-3)
    assert opt.defaults["fused"] is True
    assert create_optimizer(nn.Linear(3, 2), lr=1e-3, foreach=True).defaults["fused"] in (
        None,
        False,
    )


def test_print_summary_is_a_keras_style_table():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    freeze(model[0])
    table = str(summary(model))
    lines = table.splitlines()
    assert lines[1].split() == ["Layer", "(type)", "Param", "#", "Trainable", "Non-trainable"]
    assert lines[3].split() == ["0", "(Linear)", "15", "0", "15"]
    assert lines[4].split() == ["1", "(BatchNorm1d)", "12", "6", "6"]  # + running stats
    assert "Total params: 27 (6 weight tensors)" in table
    assert "Trainable params: 6 (2)" in table and "Non-trainable params: 21 (4)" in table
    assert repr(summary(model)).startswith("Summary(layers=[")  # repr keeps the fields
