"""What the transferkit cache folder holds, how much disk it takes, and clearing it.

Everything under the cache folder (``data.cache_root()``) can be recomputed: removing
a part costs time on the next fit, never a result. The parts:

- ``features``: cached backbone features (the ``fit --cache-dir`` default);
- ``copies``: working copies of large images (a 12 MP photo's copy is ~100 KB);
- ``scan``: the scan's verdicts, one JSON file per data folder;
- ``arrays``: in-memory images written once as PNG files.

Clearing removes whole parts, never single files: a part is consistent or absent.
A part that a running fit is writing to (a feature shard still being written) is
left alone, and the result says so.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .data.cache import cache_root
from .errors import InputError

PARTS = {
    "features": "backbone features, per model and image",
    "copies": "working copies of large images",
    "scan": "scan verdicts, per data folder",
    "arrays": "in-memory images written as PNG",
}
BUSY_AGE_S = 600  # a temporary file younger than this may belong to a running fit


@dataclass
class PartUsage:
    part: str
    about: str
    folder: str
    files: int
    bytes: int
    newest: float | None  # modification time (epoch seconds) of the newest file

    def to_dict(self) -> dict:
        return asdict(self)


def cache_usage(root: str | Path | None = None) -> list[PartUsage]:
    """Files and bytes of each part of the cache (absent parts count zero)."""
    base = Path(root) if root is not None else cache_root()
    return [_usage(part, base / part) for part in PARTS]


def _usage(part: str, folder: Path) -> PartUsage:
    files, size, newest = 0, 0, None
    if folder.is_dir():
        for path in folder.rglob("*"):
            try:
                st = path.lstat()
            except OSError:  # removed while we looked
                continue
            if path.is_file() and not path.is_symlink():
                files += 1
                size += st.st_size
                newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
    return PartUsage(part, PARTS[part], str(folder), files, size, newest)


def clear_cache(parts: list[str] | None = None, root: str | Path | None = None) -> dict:
    """Remove the named parts of the cache (default: all of them).

    Returns ``{"removed": [{part, files, bytes}], "busy": [part, ...]}``: a busy part
    (a temporary file younger than ``BUSY_AGE_S``, i.e. a fit may be writing there)
    is not touched.
    """
    base = Path(root) if root is not None else cache_root()
    chosen = parts or list(PARTS)
    unknown = [p for p in chosen if p not in PARTS]
    if unknown:
        raise InputError(
            f"--part {unknown[0]!r} is not a part of the cache; choose from {', '.join(PARTS)}"
        )
    removed, busy = [], []
    for part in chosen:
        folder = base / part
        if not folder.is_dir():
            continue
        if _busy(folder):
            busy.append(part)
            continue
        usage = _usage(part, folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append({"part": part, "files": usage.files, "bytes": usage.bytes})
    return {"folder": str(base), "removed": removed, "busy": busy}


def _busy(folder: Path) -> bool:
    now = time.time()
    for path in folder.rglob("*.tmp"):
        try:
            if now - path.lstat().st_mtime < BUSY_AGE_S:
                return True
        except OSError:
            continue
    return False


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover
