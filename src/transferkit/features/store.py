"""The on-disk feature store: arrays of features keyed by model and image content.

Torch-free on purpose (numpy, JSON, hashes): it only stores and finds rows; what
computes them is :mod:`~transferkit.features.extract`. Keys cover everything that
changes a feature (backbone and weights digest, cut, preprocessing, image size,
representation, precision) and, per row, the image file's content digest, so a
stored row can never be stale, and a re-split or a grown dataset reuses every image
already seen.

Layout: ``ROOT/<model-key>/<shard>.npy`` (written through a memory map, so large
datasets never sit in RAM) and ``<shard>.json`` (the content digests in row order,
and a SHA-256 of the array). The JSON is written last, atomically: a shard without
it, or whose checksum fails, is deleted and recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import file_sha256

log = logging.getLogger("transferkit.features")

FORMAT_VERSION = 1
IN_MEMORY_LIMIT = 2 * 1024**3  # assembled arrays above this go to a memory-mapped file


def default_cache_dir() -> Path:
    base = os.environ.get("TRANSFERKIT_CACHE_DIR") or Path.home() / ".cache" / "transferkit"
    return Path(base) / "features"


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
    """Where each stored digest is (``(shard path, row)``), and the digests that are
    missing, each with the first position that asked for it."""

    where: dict[str, tuple[Path, int]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)


class FeatureStore:
    """Folders of feature shards under ``root``. See the module docstring.

    A store built with ``writable=False`` (the other processes of a torchrun job)
    never writes or deletes anything.
    """

    def __init__(self, root: str | Path | None = None, *, writable: bool = True):
        self.root = Path(root) if root else default_cache_dir()
        self.writable = writable
        self.stats = CacheStats()

    def shards(self, key: str) -> list[tuple[Path, list[str]]]:
        """The valid shards of ``key`` as ``(array path, digests)``; damaged ones are
        deleted (in a writable store) and skipped."""
        folder = self.root / key
        if not folder.is_dir():
            return []
        found = []
        for meta_path in sorted(folder.glob("*.json")):
            digests = self._valid_digests(meta_path)
            if digests is not None:
                found.append((meta_path.with_suffix(".npy"), digests))
        for stray in folder.glob("*.npy") if self.writable else ():
            if not stray.with_suffix(".json").exists() and not stray.name.startswith("."):
                stray.unlink(missing_ok=True)  # an array whose JSON never got written
        return found

    def _valid_digests(self, meta_path: Path) -> list[str] | None:
        npy = meta_path.with_suffix(".npy")
        try:
            meta = json.loads(meta_path.read_text())
            if npy.is_file() and file_sha256(npy) == meta["sha256"]:
                return meta["digests"]
        except (OSError, ValueError, KeyError):
            pass
        if self.writable:
            log.warning("feature cache shard %s is corrupt or partial: rebuilding it", npy.name)
            self.stats.rebuilt_shards += 1
            meta_path.unlink(missing_ok=True)
            npy.unlink(missing_ok=True)
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
        backbone); digests already stored are skipped. Returns how many were new (0 in
        a store that is not ``writable``)."""
        if not self.writable:
            return 0
        known = {d for _, stored in self.shards(key) for d in stored}
        rows: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d not in known:
                rows.setdefault(d, i)
        if rows:
            self.write(key, list(rows), [features[list(rows.values())]])
        return len(rows)

    def write(self, key: str, digests: list[str], batches: Iterable) -> Path:
        """Stream batches into a memory-mapped .npy, then commit it with its JSON.

        A batch is an array of the next rows, or ``(row_indices, array)`` for rows that
        arrive out of order (gathered from several processes)."""
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        shard_id = uuid.uuid4().hex[:16]
        tmp = folder / f".{shard_id}.npy.tmp"
        _stream_rows(tmp, len(digests), batches)
        final = folder / f"{shard_id}.npy"
        os.replace(tmp, final)
        meta = {"digests": digests, "sha256": file_sha256(final), "format": FORMAT_VERSION}
        tmp_meta = folder / f".{shard_id}.json.tmp"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, final.with_suffix(".json"))
        return final

    def assemble(self, key: str, digests: Sequence[str], where) -> np.ndarray:
        """One array with row ``i`` = the stored features of ``digests[i]``."""
        arrays: dict[Path, np.ndarray] = {}
        first_path, _ = where[digests[0]]
        sample = np.load(first_path, mmap_mode="r")
        shape = (len(digests), *sample.shape[1:])
        if int(np.prod(shape)) * 4 > IN_MEMORY_LIMIT:
            scratch = self.root / key / f".assembled-{uuid.uuid4().hex[:8]}.npy"
            out = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=shape)
            scratch.unlink()  # POSIX keeps the mapping alive; nothing is left behind
        else:
            out = np.empty(shape, dtype=np.float32)
        for i, d in enumerate(digests):
            path, row = where[d]
            if path not in arrays:
                arrays[path] = np.load(path, mmap_mode="r")
            out[i] = arrays[path][row]
        return out


def _stream_rows(path: Path, n_rows: int, batches: Iterable) -> None:
    out = None
    row = 0
    for batch in batches:
        rows, feats = batch if isinstance(batch, tuple) else (None, batch)
        if out is None:
            out = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=(n_rows, *feats.shape[1:])
            )
        if rows is None:
            rows = slice(row, row + len(feats))
            row += len(feats)
        out[rows] = feats
    out.flush()
    del out
