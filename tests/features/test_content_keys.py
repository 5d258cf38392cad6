"""Features are keyed by what an image holds, not by what its file's size and
modification time say: an image edited in place is extracted again."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from helpers import FAST_FIT, TinyNet
from transferkit.estimator import TransferClassifier


def _bmp_folder(root, per_class=4):
    """Uncompressed BMPs: an edit of the pixels keeps the file size."""
    rng = np.random.default_rng(0)
    for ci, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        folder = root / f"class{ci}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.array(colour, np.float32) + rng.normal(0, 40, (16, 16, 3))
            Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(folder / f"{i}.bmp")
    return root


def _fit(data, cache):
    torch.manual_seed(0)
    clf = TransferClassifier(
        TinyNet(), "feature-extract", cut="blocks.2", cache_dir=str(cache), **FAST_FIT
    )
    return clf.fit(data).metrics_["feature_cache"]


def test_an_image_edited_in_place_with_size_and_mtime_kept_is_extracted_again(tmp_path):
    data = _bmp_folder(tmp_path / "data")
    assert _fit(data, tmp_path / "cache")["extracted"] == 24  # 12 images, 12 mirror images
    image = data / "class0" / "0.bmp"
    st = os.stat(image)
    edited = np.asarray(Image.open(image)).copy()
    edited[:8] = 255 - edited[:8]
    Image.fromarray(edited).save(tmp_path / "edited.bmp")
    with open(image, "r+b") as f:  # in place: same inode, same size
        f.write((tmp_path / "edited.bmp").read_bytes())
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(image).st_size, os.stat(image).st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    again = _fit(data, tmp_path / "cache")
    assert (again["extracted"], again["hits"]) == (2, 22)  # the image and its mirror
