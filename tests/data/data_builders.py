"""Writers of tiny good and bad image files for the data-layer tests (8-32 px)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112


def noise(size=(16, 12), mode="RGB", seed=0) -> Image.Image:
    """A random image: distinct seeds give distinct bytes (no accidental duplicates)."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None).convert(mode)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def good_images(folder: Path, n: int, seed: int = 0, ext: str = "png") -> list[Path]:
    return [save(noise(seed=seed * 1000 + i), folder / f"img{i:03d}.{ext}") for i in range(n)]


def upright_pattern() -> Image.Image:
    """16 wide x 8 tall: top half white, bottom half black (so 'upright' is testable)."""
    arr = np.zeros((8, 16, 3), np.uint8)
    arr[:4] = 255
    return Image.fromarray(arr)


def exif_rotated(path: Path) -> Path:
    """Store the pattern rotated 90 degrees counter-clockwise, tagged orientation 6
    ('rotate 90 CW to display'), as a phone does."""
    stored = upright_pattern().rotate(90, expand=True)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return save(stored, path, exif=exif, quality=95)


def sixteen_bit(path: Path, value: int = 40000) -> Path:
    return save(Image.fromarray(np.full((10, 12), value, np.uint16)), path)


def rgba_transparent(path: Path) -> Path:
    arr = np.zeros((10, 12, 4), np.uint8)  # black, fully transparent
    arr[:, :6, 3] = 255  # left half opaque black
    return save(Image.fromarray(arr, mode=None), path)


def palette_with_transparency(path: Path) -> Path:
    img = noise(mode="RGB", seed=7).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return save(img, path, transparency=0)


def cmyk_red(path: Path) -> Path:
    return save(Image.new("RGB", (12, 10), (255, 0, 0)).convert("CMYK"), path, quality=95)


def truncated(path: Path) -> Path:
    save(noise(size=(32, 32), seed=99), path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_png(path: Path) -> Path:
    save(noise(size=(32, 32), seed=98), path)
    data = bytearray(path.read_bytes())
    i = data.index(b"IDAT")
    rng = np.random.default_rng(1)
    data[i + 8 : i + 200] = rng.integers(0, 256, 192, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def bomb_png(path: Path, width: int = 10_000, height: int = 10_000) -> Path:
    """A tiny PNG whose header claims a huge size (a decompression bomb's signature)."""
    save(noise(size=(8, 8), seed=97), path)
    data = bytearray(path.read_bytes())
    i = data.index(b"IHDR")
    data[i + 4 : i + 12] = struct.pack(">II", width, height)
    data[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(data[i : i + 17])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def build_junk_folder(root: Path) -> dict:
    """A dataset with every bad-input kind next to good images.

    Returns {"good": {class: n}, "bad": {relative path: kind}} describing what a
    correct scan must find.
    """
    cat, dog = root / "cat", root / "dog"
    good_images(cat, 3, seed=1)
    good_images(dog, 4, seed=2, ext="jpg")
    # Converted, not rejected.
    save(noise(mode="L", seed=11), cat / "gray.png")
    palette_with_transparency(cat / "palette.png")
    rgba_transparent(cat / "rgba.png")
    cmyk_red(cat / "cmyk.jpg")
    sixteen_bit(cat / "sixteen.png")
    exif_rotated(cat / "exif.jpg")
    save(noise(seed=12), cat / "café_ünïcode.png")
    save(noise(seed=13), cat / "猫.png")
    save(noise(seed=14), cat / "nested" / "deeper.png")
    save(noise(seed=15), Path(os.fsdecode(os.fsencode(str(dog)) + b"/bad-\xff-name.png")))
    good = {"cat": 12, "dog": 5}
    bad = {}

    def junk(rel: str, kind: str, data: bytes | None = None) -> None:
        path = root / rel
        if data is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        bad[rel] = kind

    junk("cat/notes.txt", "not_image", b"not an image")
    junk("cat/fake.jpg", "not_image", b"this is text pretending to be a JPEG")
    junk("cat/empty.png", "empty", b"")
    truncated(cat / "truncated.jpg")
    bad["cat/truncated.jpg"] = "corrupt"
    corrupt_png(dog / "corrupt.png")
    bad["dog/corrupt.png"] = "corrupt"
    bomb_png(dog / "bomb.png")
    bad["dog/bomb.png"] = "too_large"
    bomb_png(dog / "bigger-bomb.png", 30_000, 30_000)
    bad["dog/bigger-bomb.png"] = "too_large"
    junk("cat/.DS_Store", "hidden", b"\x00\x00\x00\x01Bud1")
    junk("dog/Thumbs.db", "hidden", b"\xd0\xcf\x11\xe0")
    junk("cat/._img000.png", "hidden", b"\x00\x05\x16\x07")
    junk("cat/.hidden.png", "hidden", b"x")
    save(noise(seed=16), cat / ".git" / "thing.png")
    bad["cat/.git"] = "hidden"
    os.symlink("loop.png", cat / "loop.png")
    bad["cat/loop.png"] = "symlink"
    os.symlink("does-not-exist.png", dog / "broken.png")
    bad["dog/broken.png"] = "symlink"
    os.symlink("..", cat / "nested" / "up")
    bad["cat/nested/up"] = "symlink"
    save(noise(seed=17), cat / "locked.png")
    os.chmod(cat / "locked.png", 0)
    bad["cat/locked.png"] = "unreadable"
    junk("README.txt", "outside_class", b"collected by hand")
    return {"good": good, "bad": bad}
