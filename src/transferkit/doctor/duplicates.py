"""Duplicates and leaks: exact copies (same content digest) and near copies (feature
similarity plus a perceptual check: aligned thumbnails, ``thumbs.py``), grouped; a
group that spans splits is a leak, because a test image that is a copy of a training
image measures memory.

Near copies need one signal strong and the other fair: a nearly equal (aligned)
thumbnail (>= 0.995) with fairly close features (>= 0.75: JPEG artefacts move the
features of a 28 px image a lot), or nearly equal features (cosine >= 0.955) with a
fairly correlated thumbnail (>= 0.85). On the bench's planted copies (resized,
re-compressed, 5% cropped) the thumbnails alone reached 0.999; on its clean
Fashion-MNIST no two different images pass either test (the closest pairs: cosine
0.954, thumbnail 0.993). The fit's leak check, which has no features at hand, uses
the thumbnail test alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .thumbs import aligned_pairs, correlation, similar_pairs

SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class NearRule:
    """When two distinct images count as copies of one picture."""

    cosine: float = 0.955  # features this similar ...
    fair_correlation: float = 0.85  # ... and thumbnails this correlated
    correlation: float = 0.995  # or thumbnails this correlated ...
    fair_cosine: float = 0.75  # ... and features this similar


DEFAULT_RULE = NearRule()


@dataclass
class DuplicateGroup:
    paths: list[str]
    splits: list[str]
    kind: str  # "exact" or "near"
    leak: bool
    dropped: list[str]  # val/test copies of training images that loading leaves out

    def to_dict(self) -> dict:
        return {
            "paths": self.paths,
            "splits": self.splits,
            "kind": self.kind,
            "leak": self.leak,
            "dropped": self.dropped,
        }


def near_pairs(
    thumbs: np.ndarray, features: np.ndarray | None, rule: NearRule = DEFAULT_RULE
) -> list[tuple[int, int]]:
    """Pairs of distinct images (rows of ``thumbs`` and ``features``) that ``rule``
    calls copies; ``features=None``: by the thumbnails alone (``rule.correlation``)."""
    by_pixels = aligned_pairs(thumbs, rule.correlation)
    if features is None:
        return [(int(i), int(j)) for i, j in by_pixels]
    unit = (features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )
    by_features = similar_pairs(unit, rule.cosine)
    found = set()
    if len(by_pixels):
        cosine = np.einsum("pd,pd->p", unit[by_pixels[:, 0]], unit[by_pixels[:, 1]])
        found |= {
            (int(i), int(j))
            for (i, j), c in zip(by_pixels, cosine, strict=True)
            if c >= rule.fair_cosine
        }
    if len(by_features):
        corr = correlation(thumbs, by_features[:, 0], by_features[:, 1])
        found |= {
            (int(i), int(j))
            for (i, j), c in zip(by_features, corr, strict=True)
            if c >= rule.fair_correlation
        }
    return sorted(found)


def group_items(items, digests: list[str], pairs) -> list[DuplicateGroup]:
    """Groups of ``items`` (with ``.rel``, ``.split``, ``.digest``, ``.kept``) joined
    by equal digests and by ``pairs`` of indices into ``digests``; singletons
    dropped. Ordered: leaks first, then larger groups, then by first path."""
    parent = list(range(len(digests)))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j in pairs:
        parent[find(i)] = find(j)
    at = {d: k for k, d in enumerate(digests)}
    members: dict[int, list] = {}
    for it in items:
        members.setdefault(find(at[it.digest]), []).append(it)
    groups = [_group(m) for m in members.values() if len(m) > 1]
    return sorted(groups, key=lambda g: (not g.leak, -len(g.paths), g.paths[0]))


def _group(members) -> DuplicateGroup:
    members = sorted(members, key=lambda it: (SPLIT_ORDER.index(it.split), it.rel))
    splits = sorted({it.split for it in members}, key=SPLIT_ORDER.index)
    return DuplicateGroup(
        paths=[it.rel for it in members],
        splits=[it.split for it in members],
        kind="exact" if len({it.digest for it in members}) == 1 else "near",
        leak=len(splits) > 1,
        dropped=[it.rel for it in members if not it.kept],
    )
