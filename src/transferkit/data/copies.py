"""Working copies: each large original is decoded once per data set, not once per epoch.

A 12 MP phone photo takes ~100 ms to decode in full and more to shrink to 224 px;
the model never needs more than a few hundred pixels of it. So the first pass that
decodes a large image (the scan of ``load_data``, else the loader) keeps a *working
copy*: upright, shorter side 1.5x the input size (``working_side``), JPEG quality 95
without chroma subsampling. Feature extraction, every fine-tuning epoch, the
advisor's measurement and prediction on the training files then decode the copy
(~2 ms) instead of the original. Copies are keyed by the original's content digest (the
scan's SHA-1), so an edited file gets a new copy and a re-split reuses every one.

Each copy file is the JPEG bytes followed by their SHA-1 (20 bytes; decoders ignore
bytes after the JPEG's end marker): a short or damaged file fails the check and is
treated as absent, then rebuilt. Writes go to a unique temporary name and are renamed
into place. A folder that cannot be written (full disk, read-only) logs one warning
and the loader goes on decoding originals.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from pathlib import Path

import PIL
from PIL import Image

from ..atomic import temporary_name
from .cache import cache_root
from .images import DEFAULT_MAX_PIXELS, decode_copy, open_working, to_channels

log = logging.getLogger("transferkit.data")

# The smallest working copy: 1.5x the usual 224 px input (see ``working_side``).
WORKING_SIDE = 336
_FORMAT = 1
_CHECK = 20  # bytes of SHA-1 after the JPEG
_WARNED: set[str] = set()


def working_side(image_size: int, crop_pct: float = 1.0) -> int:
    """Shorter side of the working copies for a model input of ``image_size`` px.

    1.5x the input size (at least ``WORKING_SIDE``): the smallest random resized
    crop of the default augmentation (60 % of the area at 3:4 aspect) spans
    sqrt(0.6 x 0.75) = 0.67 of the shorter side, so at 1.5x it still holds at least
    ``image_size`` pixels: no training crop is upsampled (blurred). And at least what
    the evaluation resize needs (``image_size / crop_pct``). Why not 2x: a 12 MP
    photo (3024 px high) then decodes at 1/8 scale (378 px) instead of 1/4, 20 %
    less decoding, and copies have 44 % fewer pixels. Train and eval transforms of
    one image size share one side, so they share the copies.
    """
    return max(WORKING_SIDE, math.ceil(1.5 * image_size), math.ceil(image_size / crop_pct))


def side_for(transform) -> int | None:
    """The working side a ``create_transform`` transform needs; ``None`` for anything
    else (no transform, or one without a resolved ``config``): originals are used."""
    cfg = getattr(transform, "config", None)
    try:
        size = max(int(v) for v in cfg["input_size"][1:])
        return working_side(size, float(cfg.get("crop_pct") or 1.0))
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


class CopyCache:
    """Working copies on disk under ``folder`` (default ``cache_root() / "copies"``).

    Picklable (a folder name and a flag), so loader worker processes share it.
    ``enabled=False`` makes every lookup a miss and every store a no-op.
    """

    def __init__(self, folder: str | os.PathLike | None = None, enabled: bool = True):
        base = Path(folder) if folder is not None else cache_root() / "copies"
        self.folder = base / f"v{_FORMAT}-pillow{PIL.__version__}"
        self.enabled = enabled

    def path(self, digest: str, side: int) -> Path:
        return self.folder / str(side) / digest[:2] / f"{digest}.jpg"

    def get(self, digest: str, side: int) -> bytes | None:
        """The copy's JPEG bytes, or ``None`` when absent, short or damaged."""
        if not self.enabled or not digest:
            return None
        try:
            blob = self.path(digest, side).read_bytes()
        except OSError:
            return None
        data, check = blob[:-_CHECK], blob[-_CHECK:]
        if len(blob) <= _CHECK or hashlib.sha1(data).digest() != check:
            return None
        return data

    def has(self, digest: str, side: int) -> bool:
        return self.get(digest, side) is not None

    def put(self, digest: str, side: int, data: bytes) -> None:
        """Store a copy; on an OSError warn once for the folder and store no more."""
        if not self.enabled or not digest:
            return
        path = self.path(digest, side)
        tmp = temporary_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data + hashlib.sha1(data).digest())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.enabled = False
            self._warn(exc)

    def _warn(self, exc: OSError) -> None:
        key = str(self.folder)
        if key in _WARNED:
            return
        _WARNED.add(key)
        log.warning(
            "working-copy folder %s cannot be written (%s): going on without it, so "
            "large images are decoded from the originals every time (free space there "
            "or set TRANSFERKIT_CACHE_DIR to another folder)",
            self.folder,
            exc.strerror or type(exc).__name__,
        )


def load_working(
    path: str,
    digest: str,
    side: int,
    channels: int = 3,
    cache: CopyCache | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """The image at ``path`` as the transform should see it: its working copy when
    the original is larger than ``side`` (from the cache, else made and stored),
    else the original itself. Raises ``InputError`` as ``open_image`` does."""
    name = os.fsdecode(path)
    data = cache.get(digest, side) if cache is not None else None
    if data is None:
        img, data = open_working(path, channels, max_pixels, side)
        if data is None:
            return to_channels(img, channels)
        if cache is not None:
            cache.put(digest, side, data)
    return decode_copy(data, name, channels)


def load_working_bytes(
    path: str, digest: str, side: int, cache: CopyCache | None = None
) -> tuple[Image.Image | None, bytes | None]:
    """``(None, copy bytes)`` for an image larger than ``side`` (from the cache, else
    made and stored), else ``(image, None)``: the original, opened in RGB."""
    data = cache.get(digest, side) if cache is not None else None
    if data is not None:
        return None, data
    img, data = open_working(path, 3, DEFAULT_MAX_PIXELS, side)
    if data is not None and cache is not None:
        cache.put(digest, side, data)
    return img, data
