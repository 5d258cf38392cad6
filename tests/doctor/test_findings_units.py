"""The doctor's rules on hand-made inputs: per-class thresholds, aligned thumbnails."""

from __future__ import annotations

import numpy as np
from PIL import Image

from transferkit.doctor.duplicates import near_pairs
from transferkit.doctor.mislabels import suspects
from transferkit.doctor.thumbs import thumbnail_views


def test_suspects_are_judged_against_their_own_class_threshold():
    """Class 0 is hard (its images get ~0.6), class 1 easy (~0.99). An image of
    class 1 given 0.45 is more suspect than one of class 0 given 0.42, although the
    given label's probability alone would rank them the other way round."""
    probs = np.array([[0.6, 0.4]] * 5 + [[0.42, 0.58]] + [[0.01, 0.99]] * 5 + [[0.55, 0.45]])
    y = np.array([0] * 6 + [1] * 6)
    found = suspects(probs, y)
    assert [s.index for s in found][:2] == [11, 5]
    assert found[0].suggested == 0 and found[0].given == 1


def _picture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def test_a_five_percent_crop_lines_up_with_its_original_and_a_stranger_does_not():
    original = _picture(0)
    cropped = original.crop((3, 3, 64, 64))  # 5% off the left and top
    jpeg_like = original.resize((80, 80), Image.Resampling.BILINEAR)
    thumbs = np.stack([thumbnail_views(im) for im in (original, cropped, jpeg_like, _picture(1))])
    pairs = near_pairs(thumbs, None)
    assert (0, 1) in pairs and (0, 2) in pairs
    assert all(3 not in p for p in pairs)
