"""Where transferkit keeps things it can recompute, and the scan-verdict cache.

Why cache verdicts: decoding every file of a 50,000-image folder takes minutes; a
re-scan should only decode what changed. A verdict is keyed by the file's path and the
SHA-1 of its bytes (and the pixel limit it was judged under). Every scan reads and
hashes every file, so an edited or replaced file is always decoded again, even one
whose size and modification time were kept: a file's digest (which keys the feature
cache) is always that of its content now, never one remembered from its metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import PIL

CACHE_ENV = "TRANSFERKIT_CACHE_DIR"
_FORMAT = 2  # 1 keyed verdicts by size and mtime


def cache_root() -> Path:
    """The transferkit cache folder: ``$TRANSFERKIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/transferkit``, else ``~/.cache/transferkit``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "transferkit"


class VerdictCache:
    """One JSON file of verdicts per scanned root, rewritten atomically after a scan.

    The cache is an optimisation only: an unreadable, corrupt or unwritable cache
    file means "decode again", never an error. The file keeps exactly the verdicts of
    the latest scan, so files deleted from the dataset do not accumulate.

    Args:
        root: the dataset root the verdicts belong to (names the cache file).
        folder: where cache files live; ``None`` means ``cache_root() / "scan"``.
        enabled: ``False`` turns the cache into a no-op.
    """

    def __init__(self, root: str, folder: str | os.PathLike | None = None, enabled: bool = True):
        self.enabled = enabled
        digest = hashlib.sha1(os.fsencode(os.path.abspath(root))).hexdigest()[:20]
        self.path = Path(folder) if folder is not None else cache_root() / "scan"
        self.path = self.path / f"{digest}.json"
        self._old: dict[str, dict] = self._read() if enabled else {}
        self._new: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(digest: str, max_pixels: int) -> str:
        return f"{digest}:{max_pixels}"

    def get(self, path: str, key: str) -> dict | None:
        """The cached verdict for ``path`` if its key still matches, else ``None``.
        Only reads: safe from the scan's threads."""
        entry = self._old.get(path)
        if isinstance(entry, dict) and entry.get("key") == key:
            return entry.get("verdict")
        return None

    def keep(self, path: str, key: str, verdict: dict, *, hit: bool) -> None:
        """Record this scan's verdict for ``path`` (found in the cache or new)."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        self._new[path] = {"key": key, "verdict": verdict}

    def save(self) -> None:
        """Write the verdicts of this scan; silently skipped when the disk says no."""
        if not self.enabled or (self.misses == 0 and len(self._new) == len(self._old)):
            return
        payload = {"format": _FORMAT, "pillow": PIL.__version__, "entries": self._new}
        with contextlib.suppress(OSError, TypeError, ValueError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".scan-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(payload, f)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def _read(self) -> dict[str, dict]:
        try:
            with open(self.path, encoding="utf-8") as f:
                payload = json.load(f)
        except (OSError, ValueError):
            return {}
        # A Pillow upgrade can change what decodes; start afresh rather than trust it.
        if (
            not isinstance(payload, dict)
            or payload.get("format") != _FORMAT
            or payload.get("pillow") != PIL.__version__
        ):
            return {}
        entries = payload.get("entries")
        return entries if isinstance(entries, dict) else {}
