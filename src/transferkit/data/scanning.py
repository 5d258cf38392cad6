"""Scanning: walk class folders, then decode-check every candidate file once.

Two passes with one job each. ``walk_class_folder`` turns a folder tree into candidate
files, setting aside OS litter, hidden files, symlink loops and unreadable folders
with a reason. ``verify_files`` reads and hashes every candidate on every scan and
decodes it unless its content digest already has a verdict (in threads; hashing and
Pillow release the GIL), so a digest is always that of the bytes the file holds now,
and re-scans only decode what changed. Nothing is dropped without a ``SkippedFile``
saying why.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from .cache import VerdictCache
from .copies import WORKING_SIDE, CopyCache
from .images import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    Probe,
    extension_problem,
    inspect_image,
)

_LITTER = {
    ".ds_store": "macOS folder metadata (.DS_Store)",
    "thumbs.db": "Windows thumbnail cache (Thumbs.db)",
    "ehthumbs.db": "Windows thumbnail cache (ehthumbs.db)",
    "desktop.ini": "Windows folder settings (desktop.ini)",
    "icon\r": "macOS custom folder icon",
    "__macosx": "macOS archive metadata folder (__MACOSX)",
    "$recycle.bin": "Windows recycle bin",
    "system volume information": "Windows system folder",
    "@eadir": "Synology thumbnail folder (@eaDir)",
    ".appledouble": "macOS resource folder (.AppleDouble)",
}

log = logging.getLogger("transferkit.data")


@dataclass(frozen=True)
class Candidate:
    """A file that should be an image of class ``label`` in ``split``."""

    path: str  # absolute path used to open the file
    rel: str  # the path shown to the user, relative to the dataset root
    label: str
    split: str  # "train", "val" or "test"


@dataclass(frozen=True)
class SkippedFile:
    """A file (or folder) that could not be used, and why."""

    path: str
    reason: str
    kind: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "kind": self.kind}


@dataclass(frozen=True)
class ScannedFile:
    """A candidate that decoded cleanly, with its content hash and what the probe saw."""

    candidate: Candidate
    digest: str
    probe: Probe


@dataclass(frozen=True)
class ScanOptions:
    """How files are judged.

    Attributes:
        max_pixels: images with more pixels are refused (decompression-bomb guard).
        max_file_bytes: files larger than this are refused without being read.
        cache: reuse verdicts of unchanged files from earlier scans.
        cache_dir: where verdict files live (default: the transferkit cache + /scan).
        workers: decoding threads; ``None`` means min(8, CPU count).
        copy_side: make the working copy (``copies.py``) of every image whose
            shorter side is longer than this, in the same pass that verifies it, so
            the loader never decodes the original; ``None`` verifies only (at the
            smallest JPEG scale: ``data check``).
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    cache: bool = True
    cache_dir: str | None = None
    workers: int | None = None
    copy_side: int | None = WORKING_SIDE


@dataclass
class ScanResult:
    files: list[ScannedFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0
    cache_path: str | None = None
    copies_made: int = 0  # working copies written by this scan
    copies_bytes: int = 0  # their size on disk
    copies_reused: int = 0  # working copies already in the cache
    copies_folder: str | None = None


def litter_reason(name: str, is_dir: bool = False) -> str | None:
    """Why a file or folder name is OS litter or hidden, or ``None`` if it is not."""
    low = name.lower()
    if low in _LITTER:
        return f"OS litter: {_LITTER[low]}"
    if name.startswith("._"):
        return "OS litter: macOS resource fork (AppleDouble '._' file)"
    if name.startswith("."):
        return "hidden folder, not scanned" if is_dir else "hidden file"
    if name.startswith("~$") or name.endswith("~"):
        return "temporary or backup file"
    return None


def display_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` with '/' separators when inside it, else absolute."""
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


class _Walk:
    """State of one folder walk: where it started, what was set aside, dirs seen."""

    def __init__(self, root: str, skipped: list[SkippedFile], seen: set | None = None):
        self.root = root
        self.skipped = skipped
        self.seen: set[tuple[int, int]] = seen if seen is not None else set()

    def skip(self, path: str, reason: str, kind: str) -> None:
        self.skipped.append(SkippedFile(display_path(path, self.root), reason, kind))


def walk_class_folder(
    folder: str,
    *,
    label: str,
    split: str,
    root: str,
    skipped: list[SkippedFile],
    seen: set | None = None,
    ancestors: frozenset = frozenset(),
) -> list[Candidate]:
    """All candidate files under ``folder`` (recursively), labelled ``label``.

    Symlinked folders are followed, but a folder reached twice (a loop, or the same
    folder linked into two classes) is scanned once and the second way is reported.
    """
    walk = _Walk(root, skipped, seen)
    out: list[Candidate] = []
    key = _dir_key(folder)
    if key is not None:
        if key in ancestors:
            walk.skip(folder, "symlink loop: leads back to a folder above it", "symlink")
            return out
        if key in walk.seen:
            walk.skip(folder, "folder already scanned through another path", "symlink")
            return out
        walk.seen.add(key)
        ancestors = ancestors | {key}
    _walk(folder, label, split, walk, ancestors, out)
    return out


def _walk(
    folder: str, label: str, split: str, walk: _Walk, ancestors: frozenset, out: list[Candidate]
) -> None:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        walk.skip(folder, f"cannot list folder: {_os_reason(exc)}", _os_kind(exc))
        return
    for entry in entries:
        is_dir = _entry_is_dir(entry, walk)
        if is_dir:
            _walk_subfolder(entry.path, label, split, walk, ancestors, out)
        elif is_dir is not None:
            out.append(Candidate(entry.path, display_path(entry.path, walk.root), label, split))


def _entry_is_dir(entry: os.DirEntry, walk: _Walk) -> bool | None:
    """Whether ``entry`` is a folder, following symlinks; ``None`` when it is set aside
    (OS litter, hidden, or a symlink that cannot be followed)."""
    try:
        is_dir = entry.is_dir()  # follows symlinks
        is_link = entry.is_symlink()
    except OSError:
        is_dir, is_link = False, True
    reason = litter_reason(entry.name, is_dir)
    if reason:
        walk.skip(entry.path, reason, "hidden")
        return None
    if not is_link:
        return is_dir
    try:
        st = os.stat(entry.path)
    except OSError as exc:
        walk.skip(entry.path, _link_reason(exc), "symlink")
        return None
    return stat.S_ISDIR(st.st_mode)


def _walk_subfolder(
    path: str, label: str, split: str, walk: _Walk, ancestors: frozenset, out: list[Candidate]
) -> None:
    """Walk into ``path`` unless it leads back up (a loop) or was already walked."""
    key = _dir_key(path)
    if key in ancestors:
        walk.skip(path, "symlink loop: leads back to a folder above it", "symlink")
    elif key in walk.seen:
        walk.skip(path, "folder already scanned through another path", "symlink")
    else:
        if key is not None:
            walk.seen.add(key)
        _walk(path, label, split, walk, ancestors | {key}, out)


def verify_files(
    candidates: list[Candidate], *, root: str, options: ScanOptions | None = None
) -> ScanResult:
    """Decode-check every candidate once; return the usable files and the rest with reasons.

    Cheap checks (extension, size) run first in this thread; every other file is read
    and hashed, in a thread pool, and decoded only if the cache has no verdict for
    its content.
    """
    options = options or ScanOptions()
    cache = VerdictCache(root, options.cache_dir, enabled=options.cache)
    result = ScanResult(cache_path=str(cache.path) if options.cache else None)
    outcomes: list[ScannedFile | SkippedFile | None] = [_precheck(c, options) for c in candidates]
    todo = [i for i, o in enumerate(outcomes) if o is None]
    workers = options.workers or min(8, os.cpu_count() or 1)
    copies = _Copies(CopyCache(), options.copy_side) if options.copy_side else None
    check = lambda i: _check(candidates[i].path, options.max_pixels, cache, copies)  # noqa: E731
    with warnings.catch_warnings():
        # We judge size ourselves; PIL's warning would only repeat it on stderr.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if workers > 1 and len(todo) > 16:
            with ThreadPoolExecutor(workers) as pool:
                checked = list(pool.map(check, todo))
        else:
            checked = [check(i) for i in todo]
    for i, (digest, probe_or_error, hit) in zip(todo, checked, strict=True):
        c = candidates[i]
        if isinstance(probe_or_error, SkippedFile):  # unreadable: not cached, may be fixed
            outcomes[i] = SkippedFile(c.rel, probe_or_error.reason, probe_or_error.kind)
            continue
        verdict = {"digest": digest, "probe": probe_or_error.to_dict()}
        cache.keep(c.path, cache.key(digest, options.max_pixels), verdict, hit=hit)
        outcomes[i] = _outcome(c, digest, probe_or_error)
    cache.save()
    result.cache_hits, result.cache_misses = cache.hits, cache.misses
    if copies is not None:
        copies.report(result)
    for o in outcomes:
        (result.files if isinstance(o, ScannedFile) else result.skipped).append(o)
    return result


def _precheck(c: Candidate, options: ScanOptions) -> SkippedFile | None:
    """Why a candidate is refused without being read, or ``None`` to read it."""
    problem = extension_problem(c.path)
    if problem:
        return SkippedFile(c.rel, problem, "not_image")
    try:
        st = os.stat(c.path)
    except OSError as exc:
        kind = "missing" if isinstance(exc, FileNotFoundError) else _os_kind(exc)
        reason = "file not found" if kind == "missing" else f"cannot read: {_os_reason(exc)}"
        if os.path.islink(c.path):
            reason, kind = _link_reason(exc), "symlink"
        return SkippedFile(c.rel, reason, kind)
    if not stat.S_ISREG(st.st_mode):
        return SkippedFile(
            c.rel, "not a regular file (folder, device, pipe or socket)", "not_image"
        )
    if st.st_size == 0:
        return SkippedFile(c.rel, "empty file (0 bytes)", "empty")
    if st.st_size > options.max_file_bytes:
        mib = st.st_size / 2**20
        return SkippedFile(
            c.rel,
            f"file too large to read safely ({mib:,.0f} MiB; "
            f"limit {options.max_file_bytes / 2**20:,.0f} MiB)",
            "too_large",
        )
    return None


def _outcome(c: Candidate, digest: str, probe: Probe) -> ScannedFile | SkippedFile:
    return (
        ScannedFile(c, digest, probe) if probe.ok else SkippedFile(c.rel, probe.reason, probe.kind)
    )


def _read_file(path: str) -> bytes:
    """Read a whole file (tests replace this to simulate unreadable files as root)."""
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class _Copies:
    """Where the scan puts working copies, and their shorter side."""

    cache: CopyCache
    side: int
    made: list[int] = field(default_factory=list)  # sizes of the copies written
    reused: list[str] = field(default_factory=list)  # digests whose copy was there

    def wanted(self, digest: str, probe: Probe) -> bool:
        """Whether a usable image needs a copy that the cache does not hold (never
        once the cache folder refused a write: decoding for nothing helps no one)."""
        if not (self.cache.enabled and probe.ok and min(probe.width, probe.height) > self.side):
            return False
        if self.cache.path(digest, self.side).is_file():
            self.reused.append(digest)
            return False
        return True

    def report(self, result: ScanResult) -> None:
        """Put the counts into ``result`` and say what was made and reused, and where."""
        result.copies_made, result.copies_bytes = len(self.made), sum(self.made)
        result.copies_reused, result.copies_folder = len(self.reused), str(self.cache.folder)
        if self.made or self.reused:
            log.info(
                "working copies (shorter side %d px) in %s: %d made now (%.1f MiB), %d reused "
                "(see what the cache holds: transferkit cache)",
                self.side,
                self.cache.folder,
                len(self.made),
                sum(self.made) / 2**20,
                len(self.reused),
            )


def _check(
    path: str, max_pixels: int, cache: VerdictCache, copies: _Copies | None = None
) -> tuple[str, Probe | SkippedFile, bool]:
    """(content digest, verdict, whether the verdict came from the cache): the file is
    read and hashed every time; it is decoded only when its content is new, or when
    its working copy is wanted and missing (made in the same decode)."""
    try:
        data = _read_file(path)
    except OSError as exc:
        return "", SkippedFile(path, f"cannot read: {_os_reason(exc)}", _os_kind(exc)), False
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        return digest, Probe(False, "empty", "empty file (0 bytes)"), False
    cached = cache.get(path, cache.key(digest, max_pixels))
    if cached is not None:
        try:
            probe = Probe.from_dict(cached["probe"])
        except (KeyError, TypeError):
            probe = None  # an entry from a damaged cache file: decode again
        if probe is not None:
            if copies is not None and copies.wanted(digest, probe):
                _, copy = inspect_image(data, max_pixels, copies.side)
                _store(copies, digest, copy)
            return digest, probe, True
    probe, copy = inspect_image(data, max_pixels, copies.side if copies else None)
    if copies is not None:
        _store(copies, digest, copy)
    return digest, probe, False


def _store(copies: _Copies, digest: str, copy: bytes | None) -> None:
    if copy is not None:
        copies.cache.put(digest, copies.side, copy)
        if copies.cache.enabled:  # stored (a failed write turns the cache off)
            copies.made.append(len(copy))


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _link_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop: the link points (eventually) at itself"
    if isinstance(exc, FileNotFoundError):
        return "broken symlink: its target does not exist"
    return f"symlink cannot be followed: {_os_reason(exc)}"


def _os_kind(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink"
    return "unreadable"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return exc.strerror or type(exc).__name__
