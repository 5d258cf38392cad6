"""What ``--resume`` must find unchanged: the interrupted fit's data and settings.

A resumed fit continues the interrupted one's optimizer and weights; with other data
or other settings it would quietly train a model that no single fit describes. So the
fit records a fingerprint of its data (the classes, and every image's split, class
and content hash, not its path: a moved folder is the same data) and its settings,
and a resume that differs is refused with what differs.

Settings left at their defaults are taken from the interrupted fit (a plain
``fit DATA --out RUN --resume`` needs no flags); a setting given that differs from
the recorded one is refused. Where the work runs (``device``, ``workers``,
``cache_dir``) may change.
"""

from __future__ import annotations

import hashlib

from .config import FitConfig
from .errors import InputError

WHERE_IT_RUNS = ("device", "workers", "cache_dir")


def data_record(splits) -> dict:
    """The classes, image counts per split and a digest of every (split, class, content)."""
    lines = sorted(
        f"{split}\t{splits.classes[e.label]}\t{e.digest}"
        for split in ("train", "val", "test")
        for e in getattr(splits, split)
    )
    digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    counts = {split: len(getattr(splits, split)) for split in ("train", "val", "test")}
    return {"classes": list(splits.classes), "images": counts, "sha256": digest}


def data_difference(saved: dict | None, now: dict) -> str | None:
    """How the data now differ from those recorded (``None``: they do not)."""
    if not saved or saved.get("sha256") == now["sha256"]:
        return None
    if saved.get("classes") != now["classes"]:
        return f"the classes were {saved.get('classes')}, they are {now['classes']}"
    was, now_counts = saved.get("images", {}), now["images"]
    counts = [
        f"{split} {was.get(split)} -> {n} images"
        for split, n in now_counts.items()
        if was.get(split) != n
    ]
    if counts:
        return "the images differ: " + ", ".join(counts)
    return "the same number of images, but some images (or their classes) are other ones"


def _flat(config: FitConfig) -> dict:
    d = config.to_dict()
    head = d.pop("head")
    return {**d, **head}


def resumed_settings(saved: FitConfig, given: FitConfig) -> FitConfig:
    """The interrupted fit's settings; an error naming every setting given that
    differs from them."""
    defaults, was, asked = _flat(FitConfig()), _flat(saved), _flat(given)
    changes = {}
    differs = []
    for key, value in asked.items():
        if value == was.get(key) or value == defaults.get(key):
            continue
        if key in WHERE_IT_RUNS:
            changes[key] = value
        else:
            differs.append(f"--{key.replace('_', '-')} {value} (the fit used {was.get(key)})")
    if differs:
        raise InputError(
            "--resume continues the interrupted fit with its own settings, and these "
            f"differ: {'; '.join(differs)}. Drop them, or start over with --overwrite"
        )
    return FitConfig.from_dict({**saved.to_dict(), **changes})
