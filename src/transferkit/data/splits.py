"""Splits: hold out a stratified, seeded validation set, and keep evaluation honest.

Why rank by a hash of (seed, content digest) instead of shuffling with an RNG: the
assignment of a file then depends only on its bytes and the seed, not on folder
listing order, numpy's RNG stream, or which other files exist, so the same seed gives
the same split on any machine, and adding a file never moves the others. Copies of
one image share a digest, so they always land on the same side: a duplicate can never
sit in train and validation at once.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from .scanning import ScannedFile, SkippedFile

SPLIT_METHOD = "per class, rank sha1(seed:digest), lowest round(n*fraction) to val"
_ORDER = ("train", "val", "test")


def remove_leaks(files: list[ScannedFile]) -> tuple[list[ScannedFile], list[SkippedFile]]:
    """Drop val/test files whose content already appears in an earlier split.

    A validation or test image that is a byte-for-byte copy of a training image
    measures memory, not generalisation; it is set aside with the name of its twin.
    """
    first: dict[str, ScannedFile] = {}
    kept, dropped = [], []
    for split in _ORDER:
        for f in (f for f in files if f.candidate.split == split):
            twin = first.get(f.digest)
            if twin is not None and twin.candidate.split != split:
                dropped.append(
                    SkippedFile(
                        f.candidate.rel,
                        f"same content as {twin.candidate.rel} in {twin.candidate.split}; "
                        f"dropped from {split} so evaluation does not test on training data",
                        "duplicate",
                    )
                )
                continue
            first.setdefault(f.digest, f)
            kept.append(f)
    return kept, dropped


def stratified_split(
    files: list[ScannedFile], fraction: float, seed: int
) -> tuple[list[ScannedFile], list[ScannedFile]]:
    """Split training files into (train, val), class by class.

    Each class with at least two distinct images keeps at least one for training and
    gives at least one to validation; a class with a single image keeps it for
    training. Copies (same digest) move together.
    """
    if fraction <= 0:
        return list(files), []
    by_class: dict[str, dict[str, list[ScannedFile]]] = defaultdict(lambda: defaultdict(list))
    for f in files:
        by_class[f.candidate.label][f.digest].append(f)
    train, val = [], []
    for label in sorted(by_class):
        groups = by_class[label]
        ranked = sorted(groups, key=lambda d: hashlib.sha1(f"{seed}:{d}".encode()).hexdigest())
        n = len(ranked)
        n_val = min(max(1, round(n * fraction)), n - 1) if n >= 2 else 0
        for i, digest in enumerate(ranked):
            (val if i < n_val else train).extend(groups[digest])
    key = _sort_key
    return sorted(train, key=key), sorted(val, key=key)


def split_record(
    source: str, *, fraction: float | None, seed: int | None, val: list[ScannedFile]
) -> dict:
    """What a run must store to know (and check) how validation was made.

    ``val_fingerprint`` hashes the sorted (label, digest) pairs of the validation set:
    equal fingerprints mean the very same validation images.
    """
    h = hashlib.sha1()
    for label, digest in sorted((f.candidate.label, f.digest) for f in val):
        h.update(f"{label}\0{digest}\n".encode("utf-8", "surrogatepass"))
    record = {
        "source": source,
        "seed": seed,
        "fraction": fraction,
        "n_val": len(val),
        "val_fingerprint": h.hexdigest(),
    }
    if source == "stratified":
        record["method"] = SPLIT_METHOD
    return record


def _sort_key(f: ScannedFile) -> tuple[str, str]:
    return (f.candidate.label, f.candidate.rel)
