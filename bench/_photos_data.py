"""Synthetic phone photos for bench/photos.py: JPEGs that a JPEG coder treats like
photos (smooth gradients, shapes with soft edges, texture and sensor noise), in
classes that differ in colour and shape so that a fit learns something.

Every photo is a function of (seed, index, size, quality), so a folder can be checked
and reused instead of written again: ``ensure_photos`` keeps a ``manifest.json`` next
to the class folders and rewrites only when it does not match.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# name: (top colour, bottom colour, shape), colours in RGB 0-255
CLASSES = {
    "beach": ((90, 160, 230), (225, 200, 140), "sun"),
    "forest": ((60, 110, 50), (30, 70, 25), "trunks"),
    "night": ((10, 15, 45), (25, 25, 35), "moon"),
    "sunset": ((245, 140, 60), (120, 40, 50), "mountain"),
}
MANIFEST = "manifest.json"
GENERATOR = 1  # bump when the pictures change, so old folders are rewritten
EXIF_ROTATED_EVERY = 4  # every 4th photo is stored sideways with EXIF orientation 6
_ORIENTATION = 0x0112


def photo_path(root: Path, index: int) -> Path:
    name = list(CLASSES)[index % len(CLASSES)]
    return root / name / f"IMG_{index:05d}.jpg"


def _scene(rng, index: int, w: int, h: int) -> np.ndarray:
    """The smooth picture at a quarter of the size: gradient sky/ground and the
    class's shape, float32 RGB."""
    top, bottom, shape = CLASSES[list(CLASSES)[index % len(CLASSES)]]
    jitter = rng.uniform(-25, 25, (2, 3)).astype(np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    horizon = rng.uniform(0.45, 0.7)
    mix = 1 / (1 + np.exp(-(t - horizon) * 12))
    img = (np.float32(top) + jitter[0]) * (1 - mix) + (np.float32(bottom) + jitter[1]) * mix
    img = np.broadcast_to(img, (h, w, 3)).copy()
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    _draw_shape(img, rng, shape, xx, yy)
    return img


def _draw_shape(img, rng, shape: str, xx, yy) -> None:
    """Soft-edged shapes blended into ``img`` in place."""
    h, w = img.shape[:2]

    def blend(mask, colour):
        img[:] = img * (1 - mask[..., None]) + np.float32(colour) * mask[..., None]

    if shape in ("sun", "moon"):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.1, 0.4) * h
        r = rng.uniform(0.06, 0.12) * w
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        colour = (255, 235, 120) if shape == "sun" else (235, 235, 220)
        blend(np.clip((r - d) / 4, 0, 1), colour)
        if shape == "moon":  # stars
            n = int(rng.integers(40, 80))
            for x, y in zip(rng.integers(0, w, n), rng.integers(0, h // 2, n), strict=True):
                img[y, x] = 250
    elif shape == "trunks":
        for _ in range(int(rng.integers(4, 9))):
            x0, half = rng.uniform(0, w), rng.uniform(0.01, 0.03) * w
            blend(np.broadcast_to(np.clip((half - abs(xx - x0)) / 2, 0, 1), (h, w)), (80, 55, 35))
    else:  # mountain: a dark triangle on the horizon
        peak, base = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.5) * w
        top = rng.uniform(0.25, 0.45) * h
        edge = top + abs(xx - peak) * (h - top) / base
        blend(np.clip((yy - edge) / 3, 0, 1), (40, 30, 45))


def _texture(rng, w: int, h: int) -> np.ndarray:
    """Full-size detail: two oriented sinusoids (foliage, sand, fabric) plus sensor
    noise, float32 (H, W, 1) so that it costs one plane, not three."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    out = np.zeros((h, w), np.float32)
    for _ in range(2):
        fx, fy = rng.uniform(0.05, 0.35, 2).astype(np.float32)
        out += np.float32(rng.uniform(4, 9)) * np.sin(xx * fx + yy * fy)
    out += rng.standard_normal((h, w), dtype=np.float32) * np.float32(6)
    return out[..., None]


def write_photo(root: Path, index: int, size: tuple[int, int], quality: int, seed: int) -> int:
    """Write photo ``index``; returns its size in bytes."""
    w, h = size
    rng = np.random.default_rng([seed, index])
    small = Image.fromarray(np.clip(_scene(rng, index, w // 4, h // 4), 0, 255).astype(np.uint8))
    img = np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.float32)
    img = img + _texture(rng, w, h)
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(3)  # colour noise
    photo = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if index % EXIF_ROTATED_EVERY == EXIF_ROTATED_EVERY - 1:
        # stored sideways as a phone held upright does; viewers (and transferkit)
        # turn it by the tag
        photo = photo.transpose(Image.Transpose.ROTATE_90)
        exif[_ORIENTATION] = 6
    path = photo_path(root, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    photo.save(tmp, format="JPEG", quality=quality, exif=exif.tobytes())
    os.replace(tmp, path)
    return path.stat().st_size


def _wanted(images: int, size: tuple[int, int], quality: int, seed: int) -> dict:
    return {
        "generator": GENERATOR,
        "images": images,
        "photo_size": f"{size[0]}x{size[1]}",
        "quality": quality,
        "seed": seed,
    }


def ensure_photos(
    folder: Path, images: int, size: tuple[int, int], quality: int, seed: int = 0
) -> dict:
    """``folder``/photos holds the ``images`` photos asked for (written with up to 8
    processes unless the manifest and the files say they are already there); returns
    the manifest, with the bytes of every file and whether they were written now."""
    wanted = _wanted(images, size, quality, seed)
    root = folder / "photos"
    manifest = folder / MANIFEST
    if manifest.exists():
        have = json.loads(manifest.read_text())
        sizes = have.get("bytes", [])
        if {k: have.get(k) for k in wanted} == wanted and _files_match(root, sizes):
            return {**have, "written_now": False}
    if manifest.exists():
        manifest.unlink()
    if root.exists():  # photos of other settings: never mix them with new ones
        for old in root.glob("*/IMG_*.jpg"):
            old.unlink()
    processes = max(1, min(8, os.cpu_count() or 1, images))
    with ProcessPoolExecutor(processes) as pool:
        sizes = list(
            pool.map(
                write_photo,
                [root] * images,
                range(images),
                [size] * images,
                [quality] * images,
                [seed] * images,
            )
        )
    record = {**wanted, "bytes": sizes}
    manifest.write_text(json.dumps(record) + "\n")
    return {**record, "written_now": True}


def _files_match(root: Path, sizes: list[int]) -> bool:
    present = sorted(root.glob("*/IMG_*.jpg"))
    if len(present) != len(sizes):
        return False
    for i, n in enumerate(sizes):
        path = photo_path(root, i)
        if not path.is_file() or path.stat().st_size != n:
            return False
    return True
