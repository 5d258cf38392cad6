"""Remembered decisions: a second fit on the same data and settings reuses the
advisor's measured decision instead of running the backbone over the images again
(its features were cached by the first fit).

A decision is stored under a digest of everything it depends on: the backbone and
its weights, the requested image size, every training image's content digest and
label, the classes, the seed, whether the cut may move, and the advisor's thresholds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

from ..atomic import atomic_write_text
from ..features.store import model_key
from .decide import BN_SIMILAR, SAME_AS_BEST, SMALL_PER_CLASS, Decision
from .measure import MAX_MEASURE_IMAGES

log = logging.getLogger("transferkit")


class AdviceStore:
    """JSON files of decisions under ``root``; ``writable=False`` only reads."""

    def __init__(self, root: str | Path, *, writable: bool = True):
        self.root = Path(root)
        self.writable = writable

    def path(self, backbone, splits, *, image_size, seed, allow_recut, **more) -> Path:
        """Where the decision for these inputs is kept (``more``: anything else the
        decision depends on)."""
        key = {
            **more,
            "model": model_key(backbone, backbone.data_config, image_size, "advice"),
            "train": sorted(e.digest + ":" + str(e.label) for e in splits.train),
            "classes": list(splits.classes),
            "seed": seed,
            "recut": allow_recut,
            "rules": [SMALL_PER_CLASS, SAME_AS_BEST, BN_SIMILAR, MAX_MEASURE_IMAGES],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.root / f"{digest}.json"

    def get(self, path: Path) -> Decision | None:
        """The decision stored at ``path``; a damaged file is deleted and ignored."""
        if not path.is_file():
            return None
        try:
            decision = Decision(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            if self.writable:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            return None
        log.info("reusing the measured decision for this data")
        log.debug("decision file: %s", path)
        return decision

    def put(self, path: Path, decision: Decision) -> None:
        """Remember ``decision``; a folder that cannot be written (full, read-only) only
        means it is measured again next time (the feature store warns about the folder)."""
        if not self.writable:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(decision.to_dict()))
        except OSError as exc:
            log.debug("decision not remembered: cannot write %s (%s)", path, exc.strerror or exc)
