"""Opening one image safely: the only place transferkit decodes image files.

Why one place: the scanner's verdict ("this file is usable") is only worth something
if training opens files exactly the same way. Everything here either returns an
upright image in the backbone's channel mode or raises ``InputError`` naming the file
and the problem.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from .jpeg_structure import structure_problem

# PIL's own decompression-bomb limit (~89 Mpx): a 9,500 x 9,500 photo passes, a
# crafted 50,000 x 50,000 PNG of a few kilobytes does not.
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
# A larger "image" is almost surely not one we want to read into memory.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024

_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".apng",
    ".bmp",
    ".dib",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
    ".tga",
    ".qoi",
    ".avif",
    ".jp2",
    ".j2k",
}
# Extensions we can read: the list above, minus formats this Pillow build lacks.
IMAGE_EXTENSIONS = frozenset(e for e in _EXTENSIONS if e in Image.registered_extensions())

_KNOWN_UNSUPPORTED = {
    ".heic": "HEIC/HEIF photo, which Pillow cannot read; convert it to JPEG or PNG",
    ".heif": "HEIC/HEIF photo, which Pillow cannot read; convert it to JPEG or PNG",
    ".svg": "vector image; rasterise it to PNG first",
    ".pdf": "a PDF document, not an image",
    ".psd": "a Photoshop document; export it to PNG first",
    **{
        e: "camera RAW file; convert it to JPEG or PNG first"
        for e in (".raw", ".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".rw2")
    },
}

_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# Originals in these modes get a grayscale working copy; all others an RGB one.
_GRAY_MODES = {"1", "L", "LA", "La", *_HIGH_DEPTH_MODES}
COPY_QUALITY = 95
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_ORIENTATION_TAG = 0x0112


def extension_problem(name: str) -> str | None:
    """Why a file name does not look like a readable image, or ``None`` if it does."""
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return None
    if ext in _KNOWN_UNSUPPORTED:
        return f"not usable: {_KNOWN_UNSUPPORTED[ext]}"
    return f"not an image: unknown extension {ext!r}" if ext else "not an image: no extension"


@dataclass(frozen=True)
class Probe:
    """What decoding one file fully told us (the scanner caches this)."""

    ok: bool
    kind: str  # "ok" or a problem kind: not_image, corrupt, too_large, unsupported_mode
    reason: str | None
    width: int = 0
    height: int = 0
    mode: str = ""
    orientation: int = 1

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> Probe:
        return cls(**d)


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Probe:
    """Decode ``data`` and say whether it is a usable image (see ``inspect_image``)."""
    return inspect_image(data, max_pixels)[0]


def inspect_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, side: int | None = None
) -> tuple[Probe, bytes | None]:
    """Decode ``data``, say whether it is a usable image, and make its working copy.

    Every failure becomes a ``Probe`` with a reason instead of an exception: one bad
    file must never stop a scan. The pixel count is checked from the header, before
    any pixel is decoded, so decompression bombs cost nothing. A JPEG that needs no
    working copy is not decoded at all when its marker structure vouches for it
    (``jpeg_structure``: a few milliseconds instead of ~40 for a 12 MP photo); one
    it cannot vouch for, and every JPEG that needs a copy, is decoded at reduced
    scale (draft mode): every entropy-coded block is still decoded, so a truncated
    or broken file fails exactly as in a full decode, at half the cost.

    Returns:
        ``(probe, copy)``: ``copy`` is the working copy's file bytes (see
        ``working_copy``) when ``side`` is given and the image is larger than
        ``side``; otherwise ``None``.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        probe = Probe(
            False, "not_image", "not an image: contents are not a recognised image format"
        )
        return probe, None
    except Image.DecompressionBombError as exc:
        return Probe(False, "too_large", f"too large to decode safely ({_bomb(exc)})"), None
    except Exception as exc:  # plugins raise anything (SyntaxError, struct.error, ...)
        return Probe(False, "corrupt", f"truncated or corrupt image: {_describe(exc)}"), None
    with img:
        w, h = img.size
        copying = side is not None and min(w, h) > side
        if not copying and _vouched_without_decoding(img, data, max_pixels):
            return Probe(True, "ok", None, w, h, img.mode, _orientation(img)), None
        problem = _decode_problem(img, max_pixels, side if copying else 1)
        if problem is not None:
            kind, reason = problem
            return Probe(False, kind, reason, w, h, img.mode), None
        probe = Probe(True, "ok", None, w, h, img.mode, _orientation(img))
        try:
            return probe, working_copy(img, side) if copying else None
        except Exception:  # the verdict stands; the loader makes the copy itself
            return probe, None


def _vouched_without_decoding(img: Image.Image, data: bytes, max_pixels: int) -> bool:
    """Whether an opened JPEG in a mode we convert is known good from its markers
    alone. Only ever says yes: a file it cannot vouch for is decoded to decide."""
    w, h = img.size
    return (
        img.format in ("JPEG", "MPO")
        and img.mode in ("L", "RGB", "CMYK")
        and w * h <= max_pixels
        and structure_problem(data) is None
    )


def _decode_problem(img: Image.Image, max_pixels: int, side: int) -> tuple[str, str] | None:
    """(kind, reason) when the opened ``img`` is too large, does not decode, or has a
    pixel mode we cannot convert; ``None`` when it is usable. Loads the pixels, at
    reduced scale (``draft``) where the format allows it and ``side`` is small."""
    w, h = img.size
    if w * h > max_pixels:
        return "too_large", _too_large(w, h, max_pixels)
    try:
        draft(img, side)
        img.load()
    except Exception as exc:
        return "corrupt", f"truncated or corrupt image data: {_describe(exc)}"
    try:
        to_channels(img, 3)
    except Exception as exc:
        return "unsupported_mode", f"unsupported pixel mode {img.mode!r}: {_describe(exc)}"
    return None


def open_image(
    path: str | os.PathLike,
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    side: int | None = None,
) -> Image.Image:
    """Open an image upright (EXIF orientation applied) in ``channels`` (1 or 3).

    Args:
        path: the image file.
        channels: 1 for grayscale ("L") or 3 for "RGB": the backbone's input channels.
        max_pixels: refuse images with more pixels than this (decompression bombs).
        side: when given, an image whose shorter side is longer than ``side`` comes
            back as its working copy (shorter side ``side``; see ``working_copy``),
            decoded at the smallest JPEG scale that still covers it.

    Returns:
        A loaded PIL image in mode "L" or "RGB".

    Raises:
        InputError: naming the file and the problem (missing, unreadable, not an
            image, truncated, too large).

    Example:
        >>> img = open_image("cats/001.jpg")  # doctest: +SKIP
        >>> img.mode
        'RGB'
    """
    img, copy = open_working(path, channels, max_pixels, side)
    return img if copy is None else decode_copy(copy, os.fsdecode(path), channels)


def open_working(
    path: str | os.PathLike,
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    side: int | None = None,
) -> tuple[Image.Image | None, bytes | None]:
    """``(image, None)`` as ``open_image`` gives it, or ``(None, copy)``: the working
    copy's file bytes when ``side`` is given and the image is larger than that.

    Raises:
        InputError: as ``open_image``.
    """
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels!r}")
    name = os.fsdecode(path)
    special = special_file(path)
    if special is not None:
        raise InputError(f"{name}: not a regular file ({special})")
    with _open(path, name) as img:
        w, h = img.size
        if w * h > max_pixels:
            raise InputError(f"{name}: {_too_large(w, h, max_pixels)}")
        copying = side is not None and min(w, h) > side
        try:
            if copying:
                draft(img, side)
            img.load()
            if copying:
                return None, working_copy(img, side)
            return to_channels(upright_image(img), channels), None
        except Exception as exc:
            raise InputError(f"{name}: truncated or corrupt image: {_describe(exc)}") from None


def draft(img: Image.Image, side: int) -> None:
    """Ask the decoder for the smallest scale whose shorter side is still >= ``side``.

    JPEG (draft mode) decodes at 1/2, 1/4 or 1/8 scale: the DCT is scaled, but every
    entropy-coded block is still decoded, so truncation and broken data are still
    found. A square request keeps the rule true whatever the EXIF orientation (it
    is applied after decoding, and swaps width and height). Other formats decode at
    full size; ``working_copy`` then shrinks them with ``reducing_gap``. Must be
    called before ``load``; a no-op after it.
    """
    w, h = img.size
    if min(w, h) >= 2 * side and img.format in ("JPEG", "MPO"):
        img.draft(img.mode, (side, side))


def working_copy(img: Image.Image, side: int) -> bytes:
    """The working copy of a loaded, larger-than-``side`` image, as JPEG file bytes.

    Upright, in "RGB" (or "L" for a grayscale original, converted as
    ``to_channels`` does), resized (bicubic, antialiased) so the shorter side is
    ``side``, and stored as JPEG quality 95 without chroma subsampling. Every path
    that uses a large image (scan, loader, prediction) decodes these bytes, whether
    they were just made or read from the cache: the transform sees the same pixels
    either way, bit for bit.
    """
    upright = upright_image(img)
    gray = upright.mode in _GRAY_MODES
    small = to_channels(upright, 1 if gray else 3)
    w, h = small.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    small = small.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=COPY_QUALITY, subsampling=0)
    return out.getvalue()


def decode_copy(data: bytes, name: str, channels: int = 3) -> Image.Image:
    """Working-copy bytes as a loaded image in ``channels``; ``InputError`` naming
    ``name`` when they do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_channels(img, channels)
    except Exception as exc:
        raise InputError(f"{name}: truncated or corrupt image: {_describe(exc)}") from None


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is there but not a regular file ("a named pipe", ...),
    else ``None``. Only ``stat``: opening a named pipe would wait for a writer forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # opening it says what is wrong
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a folder" if stat.S_ISDIR(mode) else "a device"


def _open(path: str | os.PathLike, name: str) -> Image.Image:
    """Open ``path`` (the header only), or raise ``InputError`` saying why it cannot be."""
    try:
        with warnings.catch_warnings():
            # Over-limit images are refused later; PIL's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except PermissionError:
        raise InputError(f"{name}: cannot read (permission denied)") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{name}: too large to decode safely ({_bomb(exc)})") from None
    except Exception as exc:
        raise InputError(f"{name}: cannot open: {_describe(exc)}") from None


def upright_image(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag so phone photos are not sideways.

    A broken EXIF block is not worth rejecting a photo for: keep it as stored.
    """
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to "L" (channels=1) or "RGB" (channels=3).

    Why not just ``img.convert("RGB")``: that clips 16-bit data to white, and turns
    transparent pixels into whatever colour happens to be stored under them (often
    black). Here 16-bit and float data are scaled to 8 bits, and transparency is
    composited over white. CMYK, palette, 1-bit and YCbCr go through Pillow.
    """
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    if img.mode == "P" or (img.mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit integer or float pixels -> 8-bit grayscale, keeping relative brightness."""
    arr = np.asarray(img)
    if img.mode == "F":
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        arr = np.nan_to_num(arr.astype(np.float64) * scale)
    elif img.mode.startswith("I;16") or int(arr.max(initial=0)) > 255:
        arr = arr.astype(np.float64) / 257.0  # the full 16-bit range onto 0..255
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _too_large(w: int, h: int, limit: int) -> str:
    return f"too large to decode safely ({w} x {h} = {w * h:,} pixels; limit {limit:,})"


def _bomb(exc: BaseException) -> str:
    return str(exc).split(", could be")[0]  # PIL's text, minus the alarm


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
