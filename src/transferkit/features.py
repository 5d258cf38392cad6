"""Feature extraction from a frozen backbone, cached on disk (DESIGN R5).

With a frozen base, running it once per image instead of once per epoch is the
largest saving in transfer learning. The cache is keyed by everything that changes
the features — backbone spec and weights digest, cut, preprocessing, image size,
representation — and, per image, by the file's content digest, so it can never be
stale, and a re-split or a grown dataset reuses every image already seen.

Layout: ``ROOT/<model-key>/<shard>.npy`` (features, written through a memory map so
large datasets never sit in RAM) and ``<shard>.json`` (the content digests in row
order, shape, and a SHA-256 of the array). The JSON is written last, atomically: a
shard without it, or whose checksum fails, is deleted and recomputed, never used.

Under torchrun (a multi-process ``collective``) rank 0 alone reads and writes the
cache: it finds what is missing, every process extracts a disjoint share of it, rank 0
gathers the rows, commits them as one shard and returns the features; the other
processes get ``None``. A cache built with ``writable=False`` (those other processes)
never writes or deletes anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import file_sha256
from .compute import Compute, as_compute
from .distributed import SINGLE, Collective
from .progress import progress_iter

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IN_MEMORY_LIMIT = 2 * 1024**3  # assembled arrays above this go to a memory-mapped file


def default_cache_dir() -> Path:
    base = os.environ.get("TRANSFERKIT_CACHE_DIR") or Path.home() / ".cache" / "transferkit"
    return Path(base) / "features"


def representation_for(pooling: str) -> str:
    """What the cache stores for a head's pooling: pooled vectors, or whole maps."""
    return "map" if pooling == "flatten" else pooling


def pool_features(x: torch.Tensor, representation: str) -> torch.Tensor:
    if representation == "map" or x.dim() == 2:
        return x
    dims = (2, 3) if x.dim() == 4 else (1,)
    return x.mean(dims) if representation == "avg" else x.amax(dims)


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
class _Shard:
    path: Path
    digests: list[str]


@dataclass
class CacheStats:
    hits: int = 0
    extracted: int = 0
    rebuilt_shards: int = 0


class FeatureCache:
    """Per-model folders of feature shards. See the module docstring."""

    def __init__(self, root: str | Path | None = None, *, writable: bool = True):
        self.root = Path(root) if root else default_cache_dir()
        self.writable = writable
        self.stats = CacheStats()

    def _shards(self, key: str) -> list[_Shard]:
        folder = self.root / key
        shards = []
        if not folder.is_dir():
            return shards
        for meta_path in sorted(folder.glob("*.json")):
            npy = meta_path.with_suffix(".npy")
            try:
                meta = json.loads(meta_path.read_text())
                ok = npy.is_file() and file_sha256(npy) == meta["sha256"]
            except (OSError, ValueError, KeyError):
                ok = False
            if not ok:
                if self.writable:
                    log.warning(
                        "feature cache shard %s is corrupt or partial: rebuilding it", npy.name
                    )
                    self.stats.rebuilt_shards += 1
                    meta_path.unlink(missing_ok=True)
                    npy.unlink(missing_ok=True)
                continue
            shards.append(_Shard(npy, meta["digests"]))
        for stray in folder.glob("*.npy") if self.writable else ():
            if not stray.with_suffix(".json").exists() and not stray.name.startswith("."):
                stray.unlink(missing_ok=True)  # an array whose JSON never got written
        return shards

    def _lookup(self, key: str, digests: Sequence[str]):
        """Where each cached digest is, and the first index of each missing one."""
        where: dict[str, tuple[Path, int]] = {}
        for shard in self._shards(key):
            for row, d in enumerate(shard.digests):
                where.setdefault(d, (shard.path, row))
        unique_missing: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d not in where:
                unique_missing.setdefault(d, i)
        self.stats.hits += sum(d in where for d in digests)
        return where, unique_missing

    def get(
        self,
        backbone,
        dataset,
        digests: Sequence[str],
        *,
        data_config: dict,
        image_size: int | None,
        representation: str = "avg",
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        loader_factory=None,
        description: str = "extracting features",
        compute: Compute | None = None,
        collective: Collective = SINGLE,
    ) -> np.ndarray | None:
        """Features for ``dataset`` (row i = example i, whose content digest is
        ``digests[i]``), running the backbone only on images not cached yet.

        ``compute`` (default: float32 on ``device``) sets precision, layout and
        compilation of the forward passes. With a multi-process ``collective`` every
        process must call this with the same arguments; see the module docstring.
        """
        compute = compute or as_compute(device)
        key = model_key(backbone, data_config, image_size, representation, compute.precision)
        extract = dict(
            representation=representation,
            batch_size=batch_size,
            compute=compute,
            loader_factory=loader_factory,
            description=description,
        )
        if collective.active:
            return self._get_sharded(key, backbone, dataset, digests, collective, extract)
        where, unique_missing = self._lookup(key, digests)
        if unique_missing:
            path = self._extract_shard(
                key, backbone, dataset, list(unique_missing.values()), list(unique_missing), extract
            )
            for row, d in enumerate(unique_missing):
                where[d] = (path, row)
        return self._assemble(key, digests, where)

    def _get_sharded(self, key, backbone, dataset, digests, collective, extract):
        """Rank 0 looks up; every process extracts every ``world``-th missing image;
        rank 0 writes the gathered rows as one shard and assembles the result."""
        where, todo = {}, None
        if collective.is_main:
            where, unique_missing = self._lookup(key, digests)
            todo = [[i, d] for d, i in unique_missing.items()]
        todo = collective.broadcast_json(todo)
        if todo:
            mine = collective.shard([i for i, _ in todo])
            subset = torch.utils.data.Subset(dataset, mine)
            rows = _gather_extracted(
                extract_iter(backbone, subset, **extract), collective, len(todo)
            )
            if collective.is_main:
                path = self._write_shard(key, [d for _, d in todo], rows)
                self.stats.extracted += len(todo)
                for row, (_, d) in enumerate(todo):
                    where[d] = (path, row)
            else:
                for _ in rows:  # take part in every gather; rank 0 keeps the rows
                    pass
        if not collective.is_main:
            return None
        return self._assemble(key, digests, where)

    def _extract_shard(self, key, backbone, dataset, indices, digests, extract) -> Path:
        subset = torch.utils.data.Subset(dataset, indices)
        path = self._write_shard(key, digests, extract_iter(backbone, subset, **extract))
        self.stats.extracted += len(indices)
        return path

    def put(
        self,
        backbone,
        digests: Sequence[str],
        features: np.ndarray,
        *,
        data_config: dict,
        image_size: int | None,
        representation: str = "avg",
    ) -> int:
        """Store features computed elsewhere (e.g. by the strategy advisor's pass, which
        already ran the backbone) so extraction need not run it again. Returns how many
        new images were stored (0 in a cache that is not ``writable``)."""
        if not self.writable:
            return 0
        key = model_key(backbone, data_config, image_size, representation)
        known = {d for shard in self._shards(key) for d in shard.digests}
        rows: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d not in known:
                rows.setdefault(d, i)
        if rows:
            self._write_shard(key, list(rows), [features[list(rows.values())]])
        return len(rows)

    def _write_shard(self, key: str, digests: list[str], batches) -> Path:
        """Stream batches into a memory-mapped .npy, then commit it with its JSON.

        A batch is an array of the next rows, or ``(row_indices, array)`` for rows that
        arrive out of order (gathered from several processes)."""
        folder = self.root / key
        folder.mkdir(parents=True, exist_ok=True)
        shard_id = uuid.uuid4().hex[:16]
        tmp = folder / f".{shard_id}.npy.tmp"
        out = None
        row = 0
        for batch in batches:
            rows, feats = batch if isinstance(batch, tuple) else (None, batch)
            if out is None:
                out = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float32, shape=(len(digests), *feats.shape[1:])
                )
            if rows is None:
                rows = slice(row, row + len(feats))
                row += len(feats)
            out[rows] = feats
        out.flush()
        del out
        final = folder / f"{shard_id}.npy"
        os.replace(tmp, final)
        meta = {"digests": digests, "sha256": file_sha256(final), "format": FORMAT_VERSION}
        tmp_meta = folder / f".{shard_id}.json.tmp"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, final.with_suffix(".json"))
        return final

    def _assemble(self, key: str, digests: Sequence[str], where) -> np.ndarray:
        arrays: dict[Path, np.ndarray] = {}
        first_path, _ = where[digests[0]]
        sample = np.load(first_path, mmap_mode="r")
        shape = (len(digests), *sample.shape[1:])
        nbytes = int(np.prod(shape)) * 4
        if nbytes > IN_MEMORY_LIMIT:
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


def extract_iter(
    backbone,
    dataset,
    *,
    representation="avg",
    batch_size=64,
    device="cpu",
    loader_factory=None,
    description="extracting features",
    compute: Compute | None = None,
):
    """Yield float32 feature batches (numpy) for ``dataset``, backbone in inference mode.

    ``compute`` (default: float32 eager on ``device``) adds bf16 autocast, NHWC layout
    and ``torch.compile`` on a GPU; features always leave as float32.
    """
    if loader_factory is None:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    else:
        loader = loader_factory(dataset, batch_size)
    compute = compute or as_compute(device)
    was_training = backbone.training
    compute.prepare(backbone.eval())
    forward = compute.maybe_compile(backbone.forward_features)
    try:
        with torch.inference_mode():
            for images, _ in progress_iter(
                loader, total=len(loader), description=description, unit="batch"
            ):
                with compute.autocast():
                    feats = forward(compute.to_device(images))
                yield pool_features(feats.float(), representation).cpu().numpy()
    finally:
        backbone.train(was_training)


def _gather_extracted(batches, collective: Collective, total: int):
    """Rank 0's view of every process's extracted batches as ``(rows, features)``:
    process ``r`` extracts items ``r, r + world, ...`` of the ``total`` missing ones.
    Every process takes part in each gather until all have run out of batches."""
    taken = [0] * collective.world_size
    batches = iter(batches)
    while True:
        feats = next(batches, None)
        if not collective.sum([feats is not None])[0]:
            return
        parts = collective.gather_rows(feats if feats is not None else np.zeros((0,), np.float32))
        for rank, part in enumerate(parts or []):
            if part.shape[0] == 0:
                continue
            rows = np.arange(taken[rank], taken[rank] + len(part)) * collective.world_size + rank
            taken[rank] += len(part)
            if rows[-1] >= total:
                raise RuntimeError("feature gather: a process sent more rows than it was given")
            yield rows, part


def extract_features(backbone, dataset, **kwargs) -> np.ndarray:
    """Uncached extraction of a whole dataset into one array (small data, tests)."""
    return np.concatenate(list(extract_iter(backbone, dataset, **kwargs)), axis=0)
