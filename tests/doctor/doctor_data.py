"""The planted data of the doctor's tests (shared by their conftest and modules)."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from helpers import make_image_folder, red_image

TINY = ["--backbone", "test_resnet", "--weights", "none", "--image-size", "16"]


def plant(root):
    """Colour classes in train/ + test/ with: a red picture filed under blue; an exact
    and a resized copy of training images in test/; a black-and-white checkerboard
    (unlike every class) filed under green."""
    make_image_folder(root, per_class=8, size=16, layout="splits", test_per_class=3)
    red_image(root / "train" / "blue" / "wrong.png")
    shutil.copy(root / "train" / "green" / "img0.png", root / "test" / "green" / "copy.png")
    with Image.open(root / "train" / "red" / "img1.png") as img:
        img.resize((24, 24), Image.Resampling.BICUBIC).save(root / "test" / "red" / "resized.png")
    board = (np.indices((16, 16)).sum(0) % 2 * 255).astype("uint8")
    Image.fromarray(np.stack([board] * 3, -1)).save(root / "train" / "green" / "odd.png")
    return root
