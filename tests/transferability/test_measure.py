"""Per-cut scores and BN similarity from one pass, on real pretrained weights."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from transferkit import create_backbone
from transferkit.transferability import bn_layers_by_cut, measure_per_cut, score_per_cut


def digits_batches(bb, size: int = 32, batch: int = 200, n: int = 400):
    """sklearn's 8x8 digits as 3-channel images, resized and normalised as the
    backbone's pretraining was (its own data config)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    images = nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False
    ).repeat(1, 3, 1, 1)
    mean = torch.tensor(bb.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bb.data_config["std"]).view(1, 3, 1, 1)
    return list(((images - mean) / std).split(batch)), digits.target[:n]


@pytest.mark.slow
@pytest.mark.realweights
def test_digits_through_efficientnet_lite0_per_cut():
    """Per-cut scores and BN similarity on a dataset unlike ImageNet, printed with their
    timings; every cut's linear probe beats chance by 3x."""
    bb = create_backbone("efficientnet_lite0")
    batches, labels = digits_batches(bb)
    start = time.perf_counter()
    per_cut, similarity = measure_per_cut(bb, batches)
    extract = time.perf_counter() - start
    scores = score_per_cut(per_cut, labels)
    bn = similarity.per_cut(bn_layers_by_cut(bb))
    print(
        f"\ndigits ({len(labels)} images, 32 px) through efficientnet_lite0: features at "
        f"{len(per_cut)} cuts and BN statistics in one pass, {extract:.1f}s; "
        f"BN similarity overall {similarity.overall:.3f}"
    )
    print(
        f"{'cut':<10}{'dim':>6}{'logme':>8}{'knn':>7}{'probe':>7}{'bn_sim':>8}"
        "   seconds (logme/knn/probe)"
    )
    for cut, s in scores.items():
        secs = "/".join(f"{v:.2f}" for v in s.seconds.values())
        print(
            f"{cut:<10}{s.n_features:>6}{s.logme:>8.3f}{s.knn_accuracy:>7.3f}"
            f"{s.linear_probe_accuracy:>7.3f}{bn[cut]:>8.3f}   {secs}"
        )
    assert all(s.linear_probe_accuracy > 3 * s.chance for s in scores.values())
    assert all(0 < v <= 1 for v in bn.values())
