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

    def to_dict(self) -> dict:
        return {
            "run": self.run,
            "considered": self.considered,
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


def rank_next(run, folder, *, k: int = 20, batch_size: int = 64, backbone=None) -> NextReport:
    """The ``k`` images of ``folder`` (files, folders or globs as ``predict`` takes)
    most worth labelling for the model of ``run``."""
    from ..predict import expand_inputs

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"--k must be a positive integer, got {k!r}")
    paths, failures = expand_inputs([folder] if isinstance(folder, (str, bytes)) else folder)
    if not paths and not failures:
        raise InputError(f"no images in {folder!r}: point next at a folder of unlabelled images")
    model, classes, transform = _load(run, backbone)
    done, feats, probs, unreadable = _look(model, transform, paths, batch_size)
    unreadable = [f.to_dict() for f in failures] + unreadable
    picks = pick(feats, uncertainty_of(probs), k) if done else []
    ranked = []
    for rank, (i, score) in enumerate(picks, 1):
        top = np.argsort(-probs[i])[:2]
        ranked.append(
            {
                "rank": rank,
                "path": done[i],
                "score": round(score, 4),
                "uncertainty": round(float(uncertainty_of(probs[i : i + 1])[0]), 4),
                "predicted": classes[int(top[0])],
                "probability": round(float(probs[i, top[0]]), 4),
                "runner_up": classes[int(top[1])] if len(top) > 1 else None,
            }
        )
    return NextReport(str(run), ranked, unreadable, len(done))


def _load(run, backbone):
    from ..predict import transform_from
    from ..runs import load_run

    loaded = load_run(run, backbone=backbone)
    model = loaded.model.eval()
    return model, loaded.classes, transform_from(loaded.config["preprocessing"])


def _look(model, transform, paths, batch_size):
    """Pooled features and probabilities of the readable ``paths``."""
    import torch

    from ..data import open_image
    from ..data.copies import side_for
    from ..features.extract import pool

    channels, side = int(getattr(transform, "channels", 3)), side_for(transform)
    done, feats, probs, unreadable = [], [], [], []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            try:
                batch.append(transform(open_image(path, channels=channels, side=side)))
                done.append(path)
            except InputError as exc:
                unreadable.append({"path": path, "reason": str(exc)})
        if batch:
            with torch.inference_mode():
                f = model.backbone.forward_features(torch.stack(batch))
                probs.append(model.head.probabilities(model.head(f)).float().numpy())
                feats.append(pool(f, "avg").flatten(1).float().numpy())
    if not done:
        return [], np.zeros((0, 1)), np.zeros((0, 1)), unreadable
    return done, np.concatenate(feats), np.concatenate(probs), unreadable
