"""In-memory images as a source: written once as PNG files, keyed by their content.

Why files and not arrays held in memory: everything downstream (scanning, content
digests, feature caches, loader worker processes under any start method) then works
on arrays exactly as on a user's folder, and a second run with the same arrays reuses
the same files.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .cache import cache_root
from .images import to_channels
from .raw import RawSource
from .scanning import Candidate, SkippedFile


def resolve_arrays(images, labels, classes=None, *, cache_dir: str | None = None) -> RawSource:
    """In-memory images and labels, written once as PNG files keyed by their content.

    Args:
        images: uint8 array (N,H,W) or (N,H,W,C) with C in 1, 3, 4; or a list of PIL
            images or uint8 arrays. A list item that is not an image is reported.
        labels: N integer indices into ``classes``, or N class-name strings.
        classes: class names; default ``str(i)`` for integer labels, else the sorted
            unique names.
    """
    items = _as_items(images)
    labels = list(np.asarray(labels).tolist()) if isinstance(labels, np.ndarray) else list(labels)
    if len(labels) != len(items):
        raise InputError(f"got {len(items)} images but {len(labels)} labels")
    names, classes = _label_names(labels, classes)
    folder = _arrays_folder(items, names, cache_dir)
    src = RawSource(kind="arrays", root=str(folder), classes=classes)
    for i, (item, name) in enumerate(zip(items, names, strict=True)):
        where = f"array[{i}]"
        if isinstance(item, str):
            src.skipped.append(SkippedFile(where, item, "not_image"))
        else:
            src.candidates.append(Candidate(str(folder / f"{i:06d}.png"), where, name, "train"))
    return src


def _as_items(images) -> list:
    """Each image as a PIL image, or a string saying why it is not one."""
    if isinstance(images, np.ndarray):
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4))
        ):
            raise InputError(
                f"images must be a uint8 array (N,H,W) or (N,H,W,C) with C in "
                f"1, 3, 4; got {images.dtype} {images.shape}"
            )
        return [_array_image(a) for a in images]
    if isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise InputError(
            f"images must be an array or a list of images, got {type(images).__name__}"
        )
    return [_item_image(x) for x in images]


def _item_image(x) -> Image.Image | str:
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == np.uint8 and (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3, 4))):
            return _array_image(x)
        return f"not an image: array of {x.dtype} {x.shape} (expected uint8 (H,W) or (H,W,C))"
    return f"not an image: {type(x).__name__}"


def _array_image(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return Image.fromarray(np.ascontiguousarray(a))


def _label_names(labels: list, classes) -> tuple[list[str], list[str]]:
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise InputError(f"classes must be unique, got {classes}")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        top = max((int(v) for v in labels), default=-1)
        classes = classes or [str(i) for i in range(top + 1)]
        bad = [int(v) for v in labels if not 0 <= int(v) < len(classes)]
        if bad:
            raise InputError(
                f"label {bad[0]} is outside 0..{len(classes) - 1} (classes: {', '.join(classes)})"
            )
        return [classes[int(v)] for v in labels], classes
    if all(isinstance(v, str) for v in labels):
        classes = classes or sorted(set(labels))
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise InputError(f"labels not in classes: {', '.join(unknown)}")
        return list(labels), classes
    raise InputError("labels must be all integers (indices into classes) or all strings")


def _arrays_folder(items: list, names: list[str], cache_dir: str | None) -> Path:
    """Write the images once, as PNG, into a folder named by their content."""
    h = hashlib.sha1(b"transferkit-arrays-1")
    for item, name in zip(items, names, strict=True):
        h.update(name.encode("utf-8", "surrogatepass") + b"\0")
        if isinstance(item, Image.Image):
            h.update(f"{item.mode}{item.size}".encode())
            h.update(item.tobytes())
        else:
            h.update(item.encode())
    base = Path(cache_dir) if cache_dir else cache_root() / "arrays"
    folder = base / h.hexdigest()[:24]
    done = folder / ".complete"
    if done.exists():
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only cache: a private temporary folder still works
        folder = Path(tempfile.mkdtemp(prefix="transferkit-arrays-"))
    try:
        for i, item in enumerate(items):
            if isinstance(item, Image.Image):
                (folder / f"{i:06d}.png").write_bytes(_png_bytes(item))
        done.touch()
    except OSError as exc:
        raise InputError(f"cannot write the in-memory images to {folder}: {exc}") from None
    return folder


def _png_bytes(img: Image.Image) -> bytes:
    if img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I;16", "P"):
        img = to_channels(img, 3)  # CMYK, float, 32-bit: PNG cannot hold them as they are
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
