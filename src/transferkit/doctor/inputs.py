"""What the doctor looks at: every image of the data source (the copies that loading
drops from val/test included), its label, split and content digest, and the cached
features of each distinct image through a frozen backbone."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Item:
    """One image file of the source.

    ``rel`` is the path as the data folder (or CSV) names it; ``split`` the split it
    is used in (a held-out validation image: ``val``); ``source_split`` the split the
    source gives it; ``kept``: False for a val/test copy of a training image, which
    loading drops."""

    rel: str
    path: str
    label: int
    split: str
    source_split: str
    digest: str
    kept: bool = True


@dataclass
class DoctorData:
    """The items, the class names, and where the features of distinct digests are."""

    classes: list[str]
    items: list[Item]
    root: str
    kind: str
    digests: list[str] = field(default_factory=list)  # distinct, in first-seen order
    features: np.ndarray | None = None  # row i: digests[i]

    def rows(self, items) -> np.ndarray:
        """Feature rows of ``items``."""
        at = {d: i for i, d in enumerate(self.digests)}
        return self.features[[at[it.digest] for it in items]]

    @property
    def kept(self) -> list[Item]:
        return [it for it in self.items if it.kept]


def load_items(data, *, val_split: float = 0.2, seed: int = 0) -> DoctorData:
    """Every image of ``data`` as loading sees it (refusing data ``fit`` refuses),
    plus the val/test copies of training images that loading drops."""
    from ..data import load_data
    from ..data.sources import resolve_source

    splits = load_data(data, val_split=val_split, seed=seed)
    src = resolve_source(data)
    by_path = {c.path: c for c in src.candidates}
    items = []
    for split in ("train", "val", "test"):
        for e in getattr(splits, split):
            c = by_path.get(e.path)
            rel = c.rel if c is not None else os.path.basename(e.path)
            source_split = c.split if c is not None else split
            items.append(Item(rel, e.path, e.label, split, source_split, e.digest))
    index = {name: i for i, name in enumerate(splits.classes)}
    by_rel = {c.rel: c for c in src.candidates}
    for skipped in splits.report.skipped:
        c = by_rel.get(skipped["path"])
        if skipped.get("kind") == "duplicate" and c is not None and c.label in index:
            digest = _file_digest(c.path)
            items.append(Item(c.rel, c.path, index[c.label], c.split, c.split, digest, False))
    return DoctorData(list(splits.classes), items, src.root, src.kind)


def _file_digest(path: str) -> str:
    """The content digest loading gives a file (sha1 of its bytes)."""
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


@dataclass(frozen=True)
class FeatureSpec:
    """Which features: a backbone spec and weights, the input size, where the cache is."""

    backbone: object = "efficientnet_lite0"
    weights: str | None = None
    image_size: int | None = None
    cache_dir: str | None = None
    workers: int | None = None
    batch_size: int = 64
    seed: int = 0


def compute_features(doctor: DoctorData, spec: FeatureSpec) -> dict:
    """Fill ``doctor.features`` with one row per distinct digest: the backbone's
    globally averaged features, from the feature cache a CPU ``fit`` of the same
    backbone and image size fills (and fills it); returns what the cache did."""
    import torch

    from ..backbones import create_backbone
    from ..compute import create_compute
    from ..data import ImageDataset, create_loader, create_transform
    from ..features import Extraction, FeatureCache

    first = {}
    for it in doctor.items:
        first.setdefault(it.digest, it)
    examples = [_Example(it.path, it.label, it.digest) for it in first.values()]
    torch.manual_seed(spec.seed)  # --weights none: the random init follows the seed, as in fit
    backbone = create_backbone(spec.backbone, weights=spec.weights)
    transform = create_transform(backbone.data_config, train=False, image_size=spec.image_size)
    dataset = ImageDataset(examples, transform, channels=backbone.input_size[0])
    extraction = Extraction(
        image_size=spec.image_size,
        representation="avg",
        compute=create_compute(torch.device("cpu")),
        loader=lambda ds, bs: create_loader(ds, batch_size=bs, workers=spec.workers),
        batch_size=spec.batch_size,
        description="doctor: features",
    )
    cache = FeatureCache(spec.cache_dir)
    array = cache.get(backbone, dataset, [e.digest for e in examples], extraction)
    doctor.digests = [e.digest for e in examples]
    doctor.features = np.asarray(array, dtype=np.float32).reshape(len(examples), -1)
    stats = cache.stats
    return {"backbone": backbone.name, "extracted": int(stats.extracted), "images": len(examples)}


@dataclass(frozen=True)
class _Example:
    path: str
    label: int
    digest: str


def check_positive(name: str, value, minimum: int = 1) -> None:
    """A one-line refusal for a count option that is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
