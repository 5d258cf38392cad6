"""What to label next: rank unlabelled images by how much labelling them would help.

A trained run looks at every unlabelled image once: its pooled features and its
class probabilities. Uncertainty is the margin between the two most probable
classes (1 - margin: an image the model cannot decide on teaches it most).
Diversity keeps the batch from being ten near-copies of one confusing picture: the
images are picked one at a time, each maximising ``uncertainty * distance`` where
distance is the cosine distance (on the run's features) to the nearest image picked
so far, scaled to [0, 1] (the first pick is the most uncertain image).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError


@dataclass
class NextReport:
    run: str
    ranked: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    considered: int = 0
    extracted: int = 0  # images whose features were not in the cache yet

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "considered": self.considered,
            "extracted": self.extracted,
            "next": self.ranked,
            "unreadable": self.unreadable,
        }


def pick(features: np.ndarray, uncertainty: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Greedy uncertainty x diversity: ``k`` row indices with the score each was
    picked at."""
    n = len(uncertainty)
    k = min(k, n)
    if k == 0:
        return []
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    nearest = np.full(n, np.inf)
    chosen: list[tuple[int, float]] = []
    taken = np.zeros(n, bool)
    for _ in range(k):
        if chosen:
            span = nearest[~taken].max()
            diversity = nearest / span if span > 0 else np.ones(n)
        else:
            diversity = np.ones(n)
        score = np.where(taken, -np.inf, uncertainty * diversity)
        best = int(score.argmax())
        chosen.append((best, float(score[best])))
        taken[best] = True
        nearest = np.minimum(nearest, np.clip(1.0 - unit @ unit[best], 0.0, 2.0))
    return chosen


def uncertainty_of(probs: np.ndarray) -> np.ndarray:
    """1 - (top probability - second), in [0, 1]."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def rank_next(
    run, folder, *, k: int = 20, batch_size: int = 64, cache_dir: str | None = None, backbone=None
) -> NextReport:
    """The ``k`` images of ``folder`` (files, folders or globs as ``predict`` takes)
    most worth labelling for the model of ``run``. Their features go through the
    feature cache (``cache_dir``: default ``fit``'s), keyed by the run's own weights,
    so asking again after a few labels costs no second pass."""
    from ..features import FeatureCache
    from ..predict import expand_inputs

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"--k must be a positive integer, got {k!r}")
    paths, failures = expand_inputs([folder] if isinstance(folder, (str, bytes)) else folder)
    if not paths and not failures:
        raise InputError(f"no images in {folder!r}: point next at a folder of unlabelled images")
    loaded = _load(run, backbone)
    cache = FeatureCache(cache_dir)
    done, feats, probs, unreadable = _look(loaded, paths, batch_size, cache)
    unreadable = [f.to_dict() for f in failures] + unreadable
    picks = pick(feats, uncertainty_of(probs), k) if done else []
    ranked = [_row(rank, done[i], score, probs[i], loaded.classes) for rank, (i, score) in
              enumerate(picks, 1)]  # fmt: skip
    return NextReport(str(run), ranked, unreadable, len(done), int(cache.stats.extracted))


def _row(rank: int, path: str, score: float, p: np.ndarray, classes) -> dict:
    top = np.argsort(-p)[:2]
    return {
        "rank": rank,
        "path": path,
        "score": round(score, 4),
        "uncertainty": round(float(uncertainty_of(p[None])[0]), 4),
        "predicted": classes[int(top[0])],
        "probability": round(float(p[top[0]]), 4),
        "runner_up": classes[int(top[1])] if len(top) > 1 else None,
    }


def _load(run, backbone):
    from ..backbones.base import weights_digest
    from ..runs import load_run

    loaded = load_run(run, backbone=backbone)
    loaded.model.eval()
    # the cache keys features by the weights: the run's own (fine-tuned) ones
    loaded.model.backbone.weights_digest = weights_digest(loaded.model.backbone.model)
    return loaded


def _look(loaded, paths, batch_size: int, cache):
    """The readable ``paths``, their pooled features and probabilities, and the
    unreadable ones with the reason."""
    import os

    import torch

    from ..compute import create_compute
    from ..data import ImageDataset, create_loader
    from ..data.scanning import Candidate, ScanOptions, verify_files
    from ..features import Extraction, representation_for
    from ..features.extract import pool
    from ..predict import transform_from
    from .inputs import _Example

    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    scan = verify_files([Candidate(p, p, "", "train") for p in paths], root=root,
                        options=ScanOptions(copy_side=None))  # fmt: skip
    unreadable = [{"path": s.path, "reason": s.reason} for s in scan.skipped]
    if not scan.files:
        return [], np.zeros((0, 1)), np.zeros((0, 1)), unreadable
    model, preprocessing = loaded.model, loaded.config["preprocessing"]
    transform = transform_from(preprocessing)
    examples = [_Example(f.candidate.path, 0, f.digest) for f in scan.files]
    dataset = ImageDataset(examples, transform, channels=model.backbone.input_size[0])
    extraction = Extraction(
        image_size=preprocessing.get("image_size"),
        representation=representation_for(model.head.config.pooling),
        compute=create_compute(torch.device("cpu")),
        loader=lambda ds, bs: create_loader(ds, batch_size=bs),
        batch_size=batch_size,
        description="next: features",
    )
    array = cache.get(model.backbone, dataset, [e.digest for e in examples], extraction)
    x = torch.from_numpy(np.ascontiguousarray(array))
    with torch.inference_mode():
        probs = model.head.probabilities(model.head(x)).double().numpy()
    feats = pool(x, "avg").flatten(1).double().numpy()
    return [e.path for e in examples], feats, probs, unreadable
