"""Similarity to pretraining: the data's statistics at BatchNorm layers against their
running statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import batches_of
from transferkit import create_backbone
from transferkit.transferability import (
    BNSimilarity,
    bn_layers_by_cut,
    bn_similarity,
    gaussian_overlap,
    measure_per_cut,
    pooled_features_per_cut,
)


def two_bn_model() -> nn.Sequential:
    """BN -> BN with hand-set running statistics: the second layer's input is the
    first one's output, which is N(0, 1) exactly when the data match the first."""
    model = nn.Sequential(nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[0].running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 30.0]))
        model[0].running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 400.0]))
    return model


def drawn_like(model: nn.Sequential, shift_sd: float = 0.0, n: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mean = model[0].running_mean.view(1, 4, 1, 1)
    sd = model[0].running_var.sqrt().view(1, 4, 1, 1)
    return list((mean + sd * (torch.randn(n, 4, 8, 8, generator=g) + shift_sd)).split(16))


def test_bn_similarity_is_one_for_matching_data_and_lower_when_shifted():
    model = two_bn_model()
    model.train()
    before = model[0].running_mean.clone()
    same = bn_similarity(model, drawn_like(model))
    shifted = bn_similarity(model, drawn_like(model, shift_sd=2.0))
    assert [name for name, _ in same.per_layer] == ["0", "1"]
    assert same.overall > 0.99
    assert shifted.overall < 0.75
    assert all(s < 0.75 for _, s in shifted.per_layer)
    # Measuring neither updates the running statistics nor changes the mode.
    assert torch.equal(model[0].running_mean, before) and model.training
    assert bn_similarity(model, drawn_like(model), max_batches=1).overall > 0.98


def test_gaussian_overlap_is_symmetric_and_scale_free():
    a = gaussian_overlap(np.array([0.0]), np.array([1.0]), np.array([1.0]), np.array([4.0]))
    b = gaussian_overlap(np.array([10.0]), np.array([400.0]), np.array([0.0]), np.array([100.0]))
    c = gaussian_overlap(np.array([1.0]), np.array([4.0]), np.array([0.0]), np.array([1.0]))
    assert a == pytest.approx(b) and a == pytest.approx(c)
    assert gaussian_overlap(
        np.array([3.0]), np.array([2.0]), np.array([3.0]), np.array([2.0])
    ) == pytest.approx(1.0)


def test_bn_similarity_per_cut_of_a_backbone():
    bb = create_backbone("test_resnet", weights="none")
    sim = bn_similarity(bb, batches_of(4))
    by_cut = bn_layers_by_cut(bb)
    assert list(by_cut) == bb.cut_points
    assert by_cut["conv1"] == ["conv1.1", "conv1.4", "bn1"]  # a deep stem, then its BN
    assert sorted(n for layers in by_cut.values() for n in layers) == sorted(
        n for n, _ in sim.per_layer
    )
    per_cut = sim.per_cut(by_cut)
    assert list(per_cut) == bb.cut_points and all(0 < v <= 1 for v in per_cut.values())
    assert json.loads(json.dumps(sim.to_dict()))["overall"] == pytest.approx(sim.overall)


def test_bn_similarity_skips_layers_pruned_by_a_cut_and_models_without_bn():
    bb = create_backbone("test_resnet", weights="none", cut="layer1")
    names = [n for n, _ in bn_similarity(bb, batches_of(2)).per_layer]
    assert names and all(n == "bn1" or n.startswith(("conv1.", "layer1.")) for n in names)
    empty = bn_similarity(nn.Sequential(nn.Conv2d(3, 4, 1)), batches_of(2))
    assert empty == BNSimilarity(per_layer=[], overall=empty.overall)
    assert math.isnan(empty.overall) and empty.to_dict()["overall"] is None
    assert math.isnan(empty.per_cut({"x": ["0"]})["x"])


def test_measure_per_cut_gives_both_measurements_from_one_pass():
    bb = create_backbone("test_resnet", weights="none")
    x = batches_of(5)
    calls = []
    bb.model.conv1.register_forward_hook(lambda *_: calls.append(True))
    feats, sim = measure_per_cut(bb, x)  # cuts=None: every cut point
    assert len(calls) == len(x)  # one pass
    assert list(feats) == bb.cut_points
    separate = pooled_features_per_cut(bb, x, bb.cut_points)
    for cut in feats:
        np.testing.assert_array_equal(feats[cut], separate[cut])
    assert sim == bn_similarity(bb, x)
