"""Test-time augmentation: a run keeps it only if it improves validation.

With ``FitConfig.tta`` on, ``fit`` measures the validation images' log-loss and
accuracy with the model's logits as they are and with their mean over the image and
its mirror image (horizontal flip), before calibration; it turns the model's
averaging on (``TransferModel.set_tta``) only when the log-loss falls and the
accuracy does not. Both numbers and the decision go to ``metrics.json`` (``tta``).
Validation images the cross-validated head trained on cannot judge it: it is then
not kept, and the record says why.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger("transferkit")
METHOD = "hflip"


def _scores(head, logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    with torch.no_grad():
        loss = float(head.loss(z, y))
        accuracy = float((head.probabilities(z).argmax(1) == y).float().mean())
    return loss, accuracy


def tta_decision(head, plain: np.ndarray, mirrored: np.ndarray, labels) -> dict:
    """The record of the decision: log-loss and accuracy of the validation images
    without and with the mirror average, and whether it is kept."""
    averaged = (np.asarray(plain) + np.asarray(mirrored)) / 2
    loss, accuracy = _scores(head, plain, labels)
    tta_loss, tta_accuracy = _scores(head, averaged, labels)
    kept = tta_loss < loss and tta_accuracy >= accuracy
    return {
        "method": METHOD,
        "kept": bool(kept),
        "val_log_loss": {"without": loss, "with": tta_loss},
        "val_accuracy": {"without": accuracy, "with": tta_accuracy},
        "images": len(labels),
        "reason": None,
    }


def decide_tta(inputs, result, evaluations: dict, *, pooled: bool) -> dict | None:
    """Measure, decide, and when kept turn the model's averaging on and replace the
    evaluations' probabilities, accuracy and loss with the averaged ones. None when
    the setting is off. Rank 0 alone calls this."""
    from .fit import held_out_logits, pooled_features

    if not inputs.config.tta:
        return None
    splits, model = inputs.splits, result.model
    if pooled or not splits.val:
        why = "the validation images were trained on" if pooled else "no validation images"
        log.info("test-time augmentation: not kept (%s to judge it by)", why)
        return {"method": METHOD, "kept": False, "reason": f"{why} to judge it by"}
    views = {}
    for split in evaluations:
        examples = getattr(splits, split)
        views[split] = [
            held_out_logits(model, pooled_features(inputs, result, examples, split, view=v))
            for v in (None, METHOD)
        ]
    labels = np.array([e.label for e in splits.val], dtype=np.int64)
    record = tta_decision(model.head, *views["val"], labels)
    log.info(
        "test-time augmentation (%s): validation log-loss %.4f -> %.4f, accuracy %.4f -> %.4f: %s",
        METHOD,
        *record["val_log_loss"].values(),
        *record["val_accuracy"].values(),
        "kept" if record["kept"] else "not kept",
    )
    if record["kept"]:
        model.set_tta(True)
        for split, ev in evaluations.items():
            _replace(model.head, ev, (views[split][0] + views[split][1]) / 2)
    return record


def _replace(head, ev, logits: np.ndarray) -> None:
    z = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    with torch.no_grad():
        ev.probabilities = head.probabilities(z).to(ev.probabilities.dtype)
    ev.loss, ev.accuracy = _scores(head, logits, ev.labels.numpy())
