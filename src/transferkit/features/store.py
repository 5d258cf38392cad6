"""The on-disk feature store: arrays of features keyed by model and image content.

Torch-free on purpose (numpy, JSON, hashes): it only stores and finds rows; what
computes them is :mod:`~transferkit.features.extract`. Keys cover everything that
changes a feature (backbone and weights digest, cut, preprocessing, image size,
representation, precision) and, per row, the image file's content digest, so a
stored row can never be stale, and a re-split or a grown dataset reuses every image
already seen.

Layout: ``ROOT/<model-key>/<shard>.npy`` and ``<shard>.json`` (the content digests in
row order, and a SHA-256 of the array); reads go through a memory map.

Several processes may share one folder. A writer streams rows into
``.<shard>.npy.tmp`` with plain writes (never through a memory map: there a full disk
is SIGBUS, here it is an error), created exclusively and held under an exclusive
``flock`` until the shard is committed: fsync, rename to ``<shard>.npy``, then the JSON
through a temp file and a rename. The JSON is the commit: a shard without it is never
used. Cleaning up deletes only what is certainly dead: a shard whose JSON or checksum
is damaged (a JSON only ever appears next to a complete array), and a stray file
(an array without JSON, a temp file) once it is older than :data:`STRAY_AGE_S` *and*
no live writer holds its lock (the lock dies with its process). Anything else is
left alone.

The store is an optimisation: when writing fails (full disk, read-only folder,
quota), it warns once, naming the folder and the reason, writes nothing more, and
the rows it was given stay in memory, so the fit goes on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import file_sha256

try:
    import fcntl
except ImportError:  # Windows: no flock; there an open file cannot be deleted anyway
    fcntl = None

log = logging.getLogger("transferkit.features")

FORMAT_VERSION = 1
IN_MEMORY_LIMIT = 2 * 1024**3  # assembled arrays above this go to a memory-mapped file
STRAY_AGE_S = 600  # a stray file younger than this may belong to a writer just starting
_NO_PREALLOCATION = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}

Rows = Path | np.ndarray  # where rows are: a committed shard, or in memory


def default_cache_dir() -> Path:
    """``features`` under the transferkit cache folder (``data.cache_root()``)."""
    from ..data.cache import cache_root

    return cache_root() / "features"


def model_key(
    backbone,
    data_config: dict,
    image_size: int | None,
    representation: str,
    precision: str = "fp32",
) -> str:
    """Digest of everything about the model side that changes the features (bf16
    autocast does; float32 keys stay what they always were)."""
    desc = {
        "format": FORMAT_VERSION,
        "backbone": backbone.name,
        "spec": str(backbone.spec),
        "weights": backbone.weights_digest,
        "cut": backbone.cut,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "image_size": image_size,
        "representation": representation,
        # large images are read from their working copies (data/copies.py), which
        # changes their pixels slightly: features from full decodes are not reused
        "decode": "working-copy-1",
    }
    if precision != "fp32":
        desc["precision"] = precision
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class CacheStats:
    """What a fit's feature lookups found: rows served from the store, rows the
    backbone had to compute, and damaged shards that were deleted."""

    hits: int = 0
    extracted: int = 0
    rebuilt_shards: int = 0


@dataclass
class Lookup:
    """Where each stored digest is (``(shard path or in-memory rows, row)``), and the
    digests that are missing, each with the first position that asked for it."""

    where: dict[str, tuple[Rows, int]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)


class FeatureStore:
    """Folders of feature shards under ``root``. See the module docstring.

    A store built with ``writable=False`` (the other processes of a torchrun job)
    never writes or deletes anything. ``unwritable`` says why writing stopped, once
    the folder refused a write.
    """

    def __init__(self, root: str | Path | None = None, *, writable: bool = True):
        self.root = Path(root) if root else default_cache_dir()
        self.writable = writable
        self.unwritable: str | None = None
        self.stats = CacheStats()

    @property
    def can_write(self) -> bool:
        return self.writable and self.unwritable is None

    def shards(self, key: str) -> list[tuple[Path, list[str]]]:
        """The valid shards of ``key`` as ``(array path, digests)``; damaged ones are
        deleted (in a writable store) and skipped, dead strays are deleted."""
        folder = self.root / key
        if not folder.is_dir():
            return []
        found = []
        for meta_path in sorted(folder.glob("*.json")):
            digests = self._valid_digests(meta_path)
            if digests is not None:
                found.append((meta_path.with_suffix(".npy"), digests))
        if self.can_write:
            _remove_dead_strays(folder)
        return found

    def _valid_digests(self, meta_path: Path) -> list[str] | None:
        npy = meta_path.with_suffix(".npy")
        try:
            meta = json.loads(meta_path.read_text())
            checksum = file_sha256(npy)
        except FileNotFoundError:  # removed meanwhile (by another process, or by hand)
            if self.can_write and not npy.exists():
                _unlink(meta_path)  # an index without its array is dead
            return None
        except (OSError, ValueError):
            meta, checksum = None, None
        if isinstance(meta, dict) and meta.get("sha256") == checksum:
            digests = meta.get("digests")
            if isinstance(digests, list):
                return digests
        log.debug("feature cache shard %s is damaged: rebuilding it", npy)
        if self.can_write:
            self.stats.rebuilt_shards += 1
            _unlink(meta_path)  # the index first: the array is never used again
            _unlink(npy)
        return None

    def lookup(self, key: str, digests: Sequence[str]) -> Lookup:
        """Find each digest's row; count the hits."""
        found = Lookup()
        for path, stored in self.shards(key):
            for row, d in enumerate(stored):
                found.where.setdefault(d, (path, row))
        for i, d in enumerate(digests):
            if d not in found.where:
                found.missing.setdefault(d, i)
        self.stats.hits += sum(d in found.where for d in digests)
        return found

    def put(self, key: str, digests: Sequence[str], features: np.ndarray) -> int:
        """Store rows computed elsewhere (the advisor's measuring pass already ran the
        backbone); digests already stored are skipped. Returns how many were stored
        (0 in a store that is not ``writable`` or cannot write)."""
        if not self.can_write:
            return 0
        known = {d for _, stored in self.shards(key) for d in stored}
        rows: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d not in known:
                rows.setdefault(d, i)
        if rows and isinstance(self.write(key, list(rows), [features[list(rows.values())]]), Path):
            return len(rows)
        return 0

    def write(self, key: str, digests: list[str], batches: Iterable) -> Rows:
        """Stream batches into a new shard and commit it with its JSON; returns its
        path, or the rows in memory when the folder cannot be written (warned once).

        A batch is an array of the next rows, or ``(row_indices, array)`` for rows that
        arrive out of order (gathered from several processes). Every batch is taken,
        whatever happens to the disk."""
        writer = _ShardWriter(self.root / key, len(digests), to_disk=self.can_write)
        try:
            for batch in batches:
                rows, feats = batch if isinstance(batch, tuple) else (None, batch)
                writer.add(rows, feats)
            stored = writer.finish(digests)
        finally:
            writer.close()
        if writer.error is not None:
            self._stop_writing(writer.error)
        return stored

    def _stop_writing(self, exc: OSError) -> None:
        if self.unwritable is None:
            self.unwritable = exc.strerror or str(exc)
            log.warning(
                "feature cache folder %s cannot be written (%s): going on without caching, "
                "this run keeps its features in memory (free space there or choose another "
                "cache folder)",
                self.root,
                self.unwritable,
            )

    def assemble(self, key: str, digests: Sequence[str], where) -> np.ndarray:
        """One array with row ``i`` = the stored features of ``digests[i]``."""
        opened: dict[Path, np.ndarray] = {}
        sample = _rows_of(where[digests[0]][0], opened)
        out = self._output(key, (len(digests), *sample.shape[1:]))
        for i, d in enumerate(digests):
            source, row = where[d]
            out[i] = _rows_of(source, opened)[row]
        return out

    def _output(self, key: str, shape: tuple) -> np.ndarray:
        """Room for the assembled rows: in memory, or above ``IN_MEMORY_LIMIT`` a
        memory-mapped scratch file whose blocks are reserved first (so writing through
        the map cannot meet a full disk), deleted at once (the map keeps it alive)."""
        if math.prod(shape) * 4 > IN_MEMORY_LIMIT and self.can_write:
            try:
                scratch = _scratch_array(self.root / key, shape)
                if scratch is not None:
                    return scratch
            except OSError as exc:
                self._stop_writing(exc)
        return np.empty(shape, dtype=np.float32)


def _rows_of(source: Rows, opened: dict[Path, np.ndarray]) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source
    if source not in opened:
        opened[source] = np.load(source, mmap_mode="r")
    return opened[source]


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _remove_dead_strays(folder: Path) -> None:
    """Delete arrays without a JSON and writers' temp files that are certainly dead."""
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            name = path.name
            if name.startswith(".") and name.endswith(".tmp"):
                _remove_if_dead(path, index=None)
            elif name.endswith(".npy") and not path.with_suffix(".json").exists():
                _remove_if_dead(path, index=path.with_suffix(".json"))


def _remove_if_dead(path: Path, index: Path | None) -> None:
    """Delete ``path`` if it is older than ``STRAY_AGE_S``, no live writer holds its
    lock and (for an array) its ``index`` has still not appeared. When unsure, keep it."""
    try:
        if time.time() - path.stat().st_mtime < STRAY_AGE_S:
            return
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while a writer lives
        if index is None or not index.exists():
            path.unlink()
            log.debug("feature cache: deleted %s, left behind by a writer that stopped", path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _npy_header(shape: tuple) -> bytes:
    buf = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype("<f4"))
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    )
    return buf.getvalue()


def _write_at(fd: int, data, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a plain write: errors are OSError)."""
    view = memoryview(data).cast("B")
    os.lseek(fd, offset, os.SEEK_SET)
    while view:
        view = view[os.write(fd, view) :]


def _reserve(fd: int, offset: int, length: int) -> bool:
    """Allocate the file's blocks now, so a full disk shows here; False where the
    system cannot (then plain writes still report it)."""
    if not hasattr(os, "posix_fallocate"):
        return False
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in _NO_PREALLOCATION:
            return False
        raise
    return True


def _scratch_array(folder: Path, shape: tuple) -> np.ndarray | None:
    path = folder / f".assembled-{uuid.uuid4().hex[:8]}.npy.tmp"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        header = _npy_header(shape)
        if not _reserve(fd, 0, len(header) + math.prod(shape) * 4):
            return None
        _write_at(fd, header, 0)
        return np.load(path, mmap_mode="r+")
    finally:
        os.close(fd)
        _unlink(path)


class _ShardWriter:
    """The rows of one new shard, on their way to disk or, once the disk has refused
    (``error``), kept in memory: rows already written are read back, the files go."""

    def __init__(self, folder: Path, n_rows: int, *, to_disk: bool):
        self.folder, self.n_rows, self.to_disk = folder, n_rows, to_disk
        self.name = uuid.uuid4().hex[:16]
        self.path = folder / f".{self.name}.npy.tmp"  # the array file, wherever it is now
        self.meta_tmp = folder / f".{self.name}.json.tmp"
        self.fd: int | None = None
        self.memory: np.ndarray | None = None
        self.error: OSError | None = None
        self.row_shape: tuple | None = None
        self.offset = 0
        self.next_row = 0
        self.written = np.zeros(n_rows, dtype=bool)
        self.committed = False

    def add(self, rows, feats: np.ndarray) -> None:
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if rows is None:
            rows = np.arange(self.next_row, self.next_row + len(feats))
            self.next_row += len(feats)
        if self.row_shape is None:
            self._start(feats.shape[1:])
        if self.fd is not None:
            try:
                self._write(np.asarray(rows), feats)
                return
            except OSError as exc:
                self._spill(exc)
        self.memory[rows] = feats

    def _start(self, row_shape: tuple) -> None:
        self.row_shape = tuple(row_shape)
        if not self.to_disk:
            self.memory = np.empty((self.n_rows, *self.row_shape), dtype=np.float32)
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            if fcntl is not None:
                with contextlib.suppress(OSError):  # no locks here: age alone protects it
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
            header = _npy_header((self.n_rows, *self.row_shape))
            self.offset = len(header)
            _reserve(self.fd, 0, self.offset + self.n_rows * self._row_bytes())
            _write_at(self.fd, header, 0)
        except OSError as exc:
            self._spill(exc)

    def _row_bytes(self) -> int:
        return 4 * math.prod(self.row_shape)

    def _write(self, rows: np.ndarray, feats: np.ndarray) -> None:
        size = self._row_bytes()
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
            _write_at(self.fd, feats, self.offset + int(rows[0]) * size)
        else:
            for r, f in zip(rows, feats, strict=True):
                _write_at(self.fd, f, self.offset + int(r) * size)
        self.written[rows] = True

    def _spill(self, exc: OSError) -> None:
        """From now on keep rows in memory; bring back those already written."""
        self.error = exc
        self.memory = np.empty((self.n_rows, *self.row_shape), dtype=np.float32)
        if self.fd is not None:
            self._read_back()
        self.close()

    def _read_back(self) -> None:
        size = self._row_bytes()
        step = max(1, (1 << 24) // size)
        for start in range(0, self.n_rows, step):
            stop = min(self.n_rows, start + step)
            mask = self.written[start:stop]
            if mask.any():
                os.lseek(self.fd, self.offset + start * size, os.SEEK_SET)
                raw = os.read(self.fd, (stop - start) * size)
                block = np.frombuffer(raw.ljust((stop - start) * size, b"\0"), np.float32)
                self.memory[start:stop][mask] = block.reshape(-1, *self.row_shape)[mask]

    def finish(self, digests: list[str]) -> Rows:
        if self.row_shape is None:
            raise ValueError("feature store: no rows were given to write")
        if self.fd is not None and not self.written.all():
            raise RuntimeError("feature store: some rows of the shard never arrived")
        if self.memory is not None:
            return self.memory
        try:
            return self._commit(digests)
        except OSError as exc:
            self._spill(exc)
            return self.memory

    def _commit(self, digests: list[str]) -> Path:
        os.fsync(self.fd)
        meta = {"digests": digests, "sha256": file_sha256(self.path), "format": FORMAT_VERSION}
        fd = os.open(self.meta_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_at(fd, json.dumps(meta).encode(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.folder / f"{self.name}.npy"
        os.replace(self.path, final)
        self.path = final
        os.replace(self.meta_tmp, final.with_suffix(".json"))  # the commit
        self.committed = True
        return final

    def close(self) -> None:
        """Release the lock; an uncommitted shard's files go."""
        if not self.committed:
            _unlink(self.path)
            _unlink(self.meta_tmp)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
