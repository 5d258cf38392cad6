"""Safe opening and conversion: every input mode becomes an upright, correctly shaped tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_builders import (
    bomb_png,
    cmyk_red,
    exif_rotated,
    noise,
    palette_with_transparency,
    rgba_transparent,
    save,
    sixteen_bit,
    truncated,
)
from PIL import Image

from transferkit.data import ImageDataset, check_data, create_transform, load_data, open_image
from transferkit.errors import InputError

CONFIG = {
    "input_size": (3, 24, 24),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def _converting_inputs(folder):
    return {
        "gray": save(noise(mode="L", seed=1), folder / "gray.png"),
        "palette": palette_with_transparency(folder / "palette.png"),
        "rgba": rgba_transparent(folder / "rgba.png"),
        "cmyk": cmyk_red(folder / "cmyk.jpg"),
        "sixteen": sixteen_bit(folder / "sixteen.png"),
        "exif": exif_rotated(folder / "exif.jpg"),
        "bilevel": save(noise(seed=2).convert("1"), folder / "bilevel.png"),
        "gray_alpha": save(noise(mode="LA", seed=3), folder / "gray_alpha.png"),
        "float_tiff": save(Image.fromarray(np.full((6, 7), 0.5, np.float32)), folder / "f.tif"),
    }


@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_gives_a_correctly_shaped_tensor(tmp_path, channels):
    paths = _converting_inputs(tmp_path)
    cfg = dict(CONFIG, input_size=(channels, 24, 24))
    tf = create_transform(cfg, train=False)
    for name, path in paths.items():
        img = open_image(path, channels=channels)
        assert img.mode == ("L" if channels == 1 else "RGB"), name
        x = tf(img)
        assert x.shape == (channels, 24, 24) and x.dtype == torch.float32, name
        assert torch.isfinite(x).all(), name


def test_exif_rotated_photo_comes_out_upright(tmp_path):
    img = open_image(exif_rotated(tmp_path / "exif.jpg"))
    assert img.size == (16, 8)  # stored as 8 x 16
    arr = np.asarray(img.convert("L"), dtype=float)
    assert arr[:4].mean() > 200 and arr[4:].mean() < 50  # white on top


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    img = open_image(sixteen_bit(tmp_path / "s.png", value=40000), channels=1)
    assert np.asarray(img).max() == round(40000 / 257)


def test_transparency_is_composited_over_white(tmp_path):
    arr = np.asarray(open_image(rgba_transparent(tmp_path / "a.png")))
    assert (arr[:, :6] == 0).all()  # opaque black stays black
    assert (arr[:, 6:] == 255).all()  # transparent (stored black) becomes white


def test_cmyk_becomes_rgb(tmp_path):
    r, g, b = np.asarray(open_image(cmyk_red(tmp_path / "c.jpg"))).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "file not found"),
        (lambda p: p.write_bytes(b"plain text") and p, "not an image"),
        (lambda p: truncated(p), "truncated or corrupt"),
        (lambda p: bomb_png(p), "too large to decode safely"),
        (lambda p: bomb_png(p, 30_000, 30_000), "too large to decode safely"),
    ],
)
def test_open_image_errors_name_the_file(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(InputError) as e:
        open_image(path)
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_dataset_reads_converted_inputs_in_the_backbones_channels(tmp_path):
    for split_seed, cls in enumerate(("a", "b")):
        folder = tmp_path / cls
        _converting_inputs(folder)
        save(noise(seed=100 + split_seed), folder / "extra.png")  # make b differ from a
    data = load_data(tmp_path, val_split=0, image_mode="L")
    tf = create_transform(dict(CONFIG, input_size=(1, 20, 20)), train=False)
    ds = ImageDataset(data.train, tf)
    assert ds.channels == 1 and len(ds) == 20
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (1, 20, 20) and y in (0, 1)
    assert check_data(tmp_path, image_mode="L").conversions["exif_rotated"] == 2
