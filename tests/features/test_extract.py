"""One extraction path: a backbone's own cut and hooks at many cuts give the same
features, pooled the same way, so the advisor's pass can seed the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import batches_of
from transferkit import create_backbone
from transferkit.compute import create_compute
from transferkit.features import collect_features, iter_features, pool


def test_pool_representations():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pool(maps, "avg"), maps.mean((2, 3)))
    assert torch.equal(pool(maps, "max"), maps.amax((2, 3)))
    assert pool(maps, "map") is maps
    tokens = torch.randn(2, 5, 4)
    assert torch.equal(pool(tokens, "avg"), tokens.mean(1))
    vectors = torch.randn(2, 4)
    assert pool(vectors, "max") is vectors
    assert torch.equal(pool((maps, "extra"), "avg"), maps.mean((2, 3)))


@pytest.mark.parametrize("cut", ["layer1", "layer3"])
def test_a_backbones_own_cut_and_a_hook_at_that_cut_give_identical_features(cut):
    x = batches_of(3, size=32)
    torch.manual_seed(0)
    whole = create_backbone("test_resnet", weights="none")
    torch.manual_seed(0)
    at_cut = create_backbone("test_resnet", weights="none", cut=cut)
    compute = create_compute(torch.device("cpu"))
    hooked = collect_features(whole, x, cuts=whole.cut_points, compute=compute, stop_early=False)
    own = collect_features(at_cut, x, compute=compute)
    assert list(own) == [cut]
    np.testing.assert_array_equal(hooked[cut], own[cut])


def test_extraction_is_batch_by_batch_in_inference_mode_and_restores_modes():
    bb = create_backbone("test_resnet", weights="none")
    bb.train()
    seen = []
    bb.model.conv1.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    batches = list(iter_features(bb, [(b, None) for b in batches_of(5, batch=2)]))
    assert [len(b[bb.cut]) for b in batches] == [2, 2, 1]
    assert seen == [True, True, True]
    assert bb.training and bb.model.bn1.training


def test_features_leave_as_float32_under_bf16_autocast():
    bb = create_backbone("test_resnet", weights="none")
    compute = create_compute(torch.device("cpu"), precision="bf16")
    (feats,) = iter_features(bb, batches_of(2), compute=compute)
    assert feats[bb.cut].dtype == np.float32
