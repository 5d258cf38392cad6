"""The built-in backbones carry real ImageNet weights and their own preprocessing, and
cut where asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.backbones import create_backbone
from transferkit.backbones.builtin import create_builtin_model
from transferkit.backbones.timm_loader import timm_data_config

pytestmark = pytest.mark.realweights


def _preprocess(img: np.ndarray, cfg: dict) -> torch.Tensor:
    size = cfg["input_size"][1:]
    im = Image.fromarray(img).resize(size[::-1], Image.BICUBIC)
    x = torch.tensor(np.asarray(im) / 255.0, dtype=torch.float32).permute(2, 0, 1)
    mean = torch.tensor(cfg["mean"])[:, None, None]
    std = torch.tensor(cfg["std"])[:, None, None]
    return ((x - mean) / std)[None]


def test_lite0_weights_are_real_imagenet_weights():
    skimage_data = pytest.importorskip("skimage.data")
    model = create_builtin_model("efficientnet_lite0").eval()
    cfg = timm_data_config(model)
    with torch.no_grad():
        cat = model(_preprocess(skimage_data.chelsea(), cfg))[0]
        coffee = model(_preprocess(skimage_data.coffee(), cfg))[0]
    assert set(cat.topk(3).indices.tolist()) & {281, 282, 283, 284, 285}
    assert coffee.argmax().item() == 967  # espresso


def test_builtin_backbone_is_the_classifier_less_model_with_its_own_preprocessing():
    bb = create_backbone("efficientnet_lite0")
    assert bb.num_features == 1280
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5)  # the tf_ variant's own cfg, not ImageNet's
    assert bb.cut_points[0] == "conv_stem" and bb.cut_points[-1] == "conv_head"
    full = create_builtin_model("efficientnet_lite0").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb.eval().forward_features(x), full.forward_features(x), atol=1e-5)


def test_cut_drops_everything_after_it():
    whole = create_backbone("efficientnet_lite0")
    cut = create_backbone("efficientnet_lite0", cut="blocks.4")
    assert cut.num_features == 112
    assert [n for n, _ in cut.blocks][-1] == "blocks.4"
    n_whole = sum(p.numel() for p in whole.parameters())
    n_cut = sum(p.numel() for p in cut.parameters())
    assert n_cut < n_whole / 3
    assert cut(torch.zeros(2, 3, 96, 96)).shape == (2, 112, 6, 6)
