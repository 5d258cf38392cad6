"""Globally pooled features at several cuts from one pass over the images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TinyNet, batches_of
from transferkit import InputError, create_backbone
from transferkit.transferability import pooled_features_per_cut


def test_pooled_features_shapes_match_channels_at_each_resnet_cut():
    bb = create_backbone("test_resnet", weights="none")
    feats = pooled_features_per_cut(bb, batches_of(5), bb.cut_points)
    assert list(feats) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert {cut: f.shape for cut, f in feats.items()} == {
        "conv1": (5, 32),
        "layer1": (5, 32),
        "layer2": (5, 48),
        "layer3": (5, 192),
        "layer4": (5, 96),
    }
    assert all(f.dtype == np.float32 for f in feats.values())


def test_pooled_features_equal_those_of_a_backbone_cut_there():
    x = batches_of(4)
    torch.manual_seed(0)
    full = create_backbone("test_resnet", weights="none")
    torch.manual_seed(0)
    cut = create_backbone("test_resnet", weights="none", cut="layer2")
    feats = pooled_features_per_cut(full, x, ["layer2"])["layer2"]
    with torch.no_grad():
        expected = torch.cat([cut.eval()(b).mean(dim=(2, 3)) for b in x]).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    # The cut backbone itself yields its own cut (our hook runs before its stop hook),
    # but nothing above it, and a factory works as well as a backbone.
    np.testing.assert_allclose(
        pooled_features_per_cut(cut, x, ["layer2"])["layer2"], expected, rtol=1e-5, atol=1e-6
    )
    with pytest.raises(InputError, match="did not run"):
        pooled_features_per_cut(lambda: cut, x, ["layer3"])


def test_pooled_features_stop_after_the_highest_cut_and_restore_modes():
    net = TinyNet()
    net.train()
    ran = []
    net.fc.register_forward_hook(lambda *_: ran.append(True))
    feats = pooled_features_per_cut(net, batches_of(4, size=16), ["stem_bn", "blocks.1"])
    assert feats["stem_bn"].shape == (4, 8) and feats["blocks.1"].shape == (4, 16)
    assert not ran  # the classifier above the cuts never ran
    assert net.training and net.stem_bn.training


def test_pooled_features_reject_unknown_cuts_and_bad_batches():
    net = TinyNet()
    with pytest.raises(InputError, match=r"unknown cut 'blocks\.9'"):
        pooled_features_per_cut(net, batches_of(2, size=16), ["blocks.9"])
    with pytest.raises(InputError, match="image tensors"):
        pooled_features_per_cut(net, [np.zeros((2, 3, 16, 16))], ["stem"])
    with pytest.raises(InputError, match="empty"):
        pooled_features_per_cut(net, [], ["stem"])
