"""The feature cache: the backbone runs only over images the store does not have."""

from __future__ import annotations

import numpy as np
import torch

from transferkit import create_backbone
from transferkit.compute import create_compute
from transferkit.features import Extraction, FeatureCache


class _Images(torch.utils.data.Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 32, 32, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def _extraction():
    return Extraction(
        image_size=32,
        representation="avg",
        compute=create_compute(torch.device("cpu")),
        loader=lambda ds, bs: torch.utils.data.DataLoader(ds, batch_size=bs),
        batch_size=4,
        description="test",
    )


def test_second_request_extracts_only_new_images_and_rows_follow_the_digests(tmp_path):
    bb = create_backbone("test_resnet", weights="none")
    images = _Images(6)
    cache = FeatureCache(tmp_path)
    first = cache.get(bb, torch.utils.data.Subset(images, range(4)), list("abcd"), _extraction())
    assert cache.stats.extracted == 4
    order = [5, 0, 4, 1]
    again = cache.get(bb, torch.utils.data.Subset(images, order), list("faeb"), _extraction())
    assert cache.stats.extracted == 6 and cache.stats.hits == 2
    np.testing.assert_array_equal(again[1], first[0])
    np.testing.assert_array_equal(again[3], first[1])


def test_bf16_features_are_stored_apart_from_float32(tmp_path):
    bb = create_backbone("test_resnet", weights="none")
    fp32 = _extraction()
    bf16 = Extraction(**{**vars(fp32), "compute": create_compute(torch.device("cpu"), "bf16")})
    cache = FeatureCache(tmp_path)
    assert cache.key(bb, fp32) != cache.key(bb, bf16)
