"""Features of a list of images through a frozen backbone, from the store when it has
them: the base runs once per image, not once per epoch (the largest saving in
transfer learning).

:class:`FeatureCache` joins the torch-free :class:`~.store.FeatureStore` (lookup,
put, assemble) and the one extraction path (:func:`~.extract.iter_features`): it
looks up every image's content digest, runs the backbone over the missing images
only, stores them as one new shard, and assembles the rows in the order asked. When
the store's folder cannot be written (full, read-only), the new rows stay in memory
and the fit goes on (the store warns once).

Under torchrun (a multi-process ``collective``) rank 0 alone reads and writes the
store: it finds what is missing, every process extracts a disjoint share of it, rank
0 gathers the rows, commits them as one shard and returns the features; the other
processes get ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..compute import Compute
from ..distributed import SINGLE, Collective
from .extract import iter_features
from .store import CacheStats, FeatureStore, model_key


@dataclass(frozen=True)
class Extraction:
    """How features are computed: they key the store along with the backbone.

    Attributes:
        image_size: the input size the images are resized to (``None``: the backbone's).
        representation: ``avg``, ``max`` (pooled vectors) or ``map`` (whole maps).
        compute: device, precision (bf16 features are stored apart) and layout.
        loader: ``loader(dataset, batch_size)`` gives the batches of a dataset.
        batch_size: images per forward pass.
        description: progress bar label.
    """

    image_size: int | None
    representation: str
    compute: Compute
    loader: Callable
    batch_size: int = 64
    description: str = "extracting features"


class FeatureCache:
    """Cached features of images through a frozen backbone. See the module docstring.

    A cache built with ``writable=False`` (the other processes of a torchrun job)
    never writes or deletes anything.
    """

    def __init__(self, root: str | Path | None = None, *, writable: bool = True):
        self.store = FeatureStore(root, writable=writable)

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def stats(self) -> CacheStats:
        return self.store.stats

    def key(self, backbone, extraction: Extraction) -> str:
        return model_key(
            backbone,
            backbone.data_config,
            extraction.image_size,
            extraction.representation,
            extraction.compute.precision,
        )

    def get(
        self,
        backbone,
        dataset,
        digests: Sequence[str],
        extraction: Extraction,
        *,
        collective: Collective = SINGLE,
    ) -> np.ndarray | None:
        """Features for ``dataset`` (row i = example i, whose content digest is
        ``digests[i]``), running the backbone only on images not stored yet. With a
        multi-process ``collective`` every process must call this with the same
        arguments; only rank 0 gets the array."""
        key = self.key(backbone, extraction)
        if collective.active:
            return self._get_sharded(key, backbone, dataset, digests, extraction, collective)
        found = self.store.lookup(key, digests)
        if found.missing:
            indices, missing = list(found.missing.values()), list(found.missing)
            subset = torch.utils.data.Subset(dataset, indices)
            rows = self.store.write(key, missing, _batches(backbone, subset, extraction))
            self.store.stats.extracted += len(indices)
            for row, d in enumerate(missing):
                found.where[d] = (rows, row)
        return self.store.assemble(key, digests, found.where)

    def put(self, backbone, digests: Sequence[str], features: np.ndarray, extraction) -> int:
        """Store features computed elsewhere with ``extraction``'s settings (the
        advisor's measuring pass); returns how many images were new."""
        return self.store.put(self.key(backbone, extraction), digests, features)

    def _get_sharded(self, key, backbone, dataset, digests, extraction, collective):
        """Rank 0 looks up; every process extracts every ``world``-th missing image;
        rank 0 writes the gathered rows as one shard and assembles the result."""
        where, todo = {}, None
        if collective.is_main:
            found = self.store.lookup(key, digests)
            where, todo = found.where, [[i, d] for d, i in found.missing.items()]
        todo = collective.broadcast_json(todo)
        if todo:
            mine = torch.utils.data.Subset(dataset, collective.shard([i for i, _ in todo]))
            rows = gather_extracted(_batches(backbone, mine, extraction), collective, len(todo))
            if collective.is_main:
                stored = self.store.write(key, [d for _, d in todo], rows)
                self.store.stats.extracted += len(todo)
                where.update({d: (stored, row) for row, (_, d) in enumerate(todo)})
            else:
                for _ in rows:  # take part in every gather; rank 0 keeps the rows
                    pass
        if not collective.is_main:
            return None
        return self.store.assemble(key, digests, where)


def _batches(backbone, dataset, extraction: Extraction):
    """Feature batches of ``dataset`` at the backbone's cut."""
    loader = extraction.loader(dataset, extraction.batch_size)
    for feats in iter_features(
        backbone,
        loader,
        representation=extraction.representation,
        compute=extraction.compute,
        description=extraction.description,
    ):
        (array,) = feats.values()
        yield array


def gather_extracted(batches, collective: Collective, total: int):
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
