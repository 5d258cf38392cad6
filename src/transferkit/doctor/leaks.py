"""The leak check ``fit`` runs on its loaded data: validation or test images that are
copies of training images.

Exact copies: loading already drops a val/test file whose bytes equal a training
file's (``data/splits.py``); here they are named with their twin. Near copies
(resized, re-compressed, slightly cropped): the perceptual hash of every image
thumbnail (``thumbs.py``), compared across splits only, by the thumbnail alone at
the strict ``NearRule.correlation`` (the fit has no features yet at this point; the
``doctor`` command confirms looser matches with features). The cost is one decode
of each image's working copy to a 16 x 16 grayscale thumbnail, measured on the bench.
"""

from __future__ import annotations

import hashlib
import logging
import os

from .duplicates import DEFAULT_RULE, SPLIT_ORDER, NearRule, group_items, near_pairs
from .inputs import Item
from .thumbs import thumbnails

log = logging.getLogger("transferkit")


def split_items(splits) -> list[Item]:
    """The loaded examples and the val/test copies loading dropped, as items."""
    root = splits.report.source.get("path") or ""
    items = []
    for split in SPLIT_ORDER:
        for e in getattr(splits, split):
            items.append(Item(_rel(e.path, root), e.path, e.label, split, split, e.digest))
    known = {it.digest for it in items}
    for skipped in splits.report.skipped:
        if skipped.get("kind") != "duplicate":
            continue
        path = os.path.join(root, skipped["path"])
        try:
            with open(path, "rb") as f:
                digest = hashlib.sha1(f.read()).hexdigest()
        except OSError:
            continue
        if digest in known:
            split = _dropped_split(skipped.get("reason", ""))
            items.append(Item(skipped["path"], path, -1, split, split, digest, False))
    return items


def _dropped_split(reason: str) -> str:
    for split in ("val", "test"):
        if f"dropped from {split}" in reason:
            return split
    return "test"


def _rel(path: str, root: str) -> str:
    try:
        rel = os.path.relpath(path, root) if root else path
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def find_leaks(splits, rule: NearRule = DEFAULT_RULE) -> list[dict]:
    """Groups of copies that span splits, as ``doctor --json`` lists them."""
    items = split_items(splits)
    digests = list(dict.fromkeys(it.digest for it in items))
    first = {}
    for it in items:
        first.setdefault(it.digest, it)
    thumbs = thumbnails([(first[d].path, d) for d in digests])
    split_of = [first[d].split for d in digests]
    pairs = [(i, j) for i, j in near_pairs(thumbs, None, rule) if split_of[i] != split_of[j]]
    return [g.to_dict() for g in group_items(items, digests, pairs) if g.leak]


def warn_leaks(groups: list[dict]) -> None:
    """One warning line per leak group, naming its files."""
    for g in groups:
        files = ", ".join(f"{p} ({s})" for p, s in zip(g["paths"], g["splits"], strict=True))
        dropped = f"; {', '.join(g['dropped'])} dropped from evaluation" if g["dropped"] else ""
        log.warning(
            "leak: %s copies share images across splits: %s%s (a test or validation "
            "copy of a training image inflates the score; `transferkit doctor` lists all)",
            g["kind"],
            files,
            dropped,
        )
