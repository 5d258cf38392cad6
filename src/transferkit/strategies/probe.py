"""The head on small data: every label used, the model chosen by cross-validation.

With a few images per class, holding a fifth out as validation wastes labels and
leaves too few images to choose by. Here, when the data are small (median under
``SMALL_PER_CLASS`` training images per class) and the head is linear, the training
and the validation images our split held out are pooled; candidates (the penalty
grid of a logistic-regression head, and nearest class mean for the smallest sets)
are compared by stratified k-fold cross-validation on the pool; the best is refitted
on all of it (see :mod:`transferkit.probe_head`).

The validation images were then trained on, so what the run reports for them comes
from the cross-validation: each one's probabilities from the fold model that did not
see it. A validation folder of the user's own stays held out: the selection then
cross-validates the training images alone.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass

import torch

from .. import probe_head
from ..advisor.decide import SMALL_PER_CLASS
from ..freezing import freeze, set_bn_policy
from ..heads import ClassifierHead, create_head
from ..training import Evaluation, PhaseResult, stateful
from .base import TrainingInputs, cached_features, labels_of
from .head import share_head

log = logging.getLogger("transferkit")


def fits_linear_head(inputs: TrainingInputs) -> bool:
    """A linear head on pooled features, no label smoothing, and not
    ``selection="holdout"``: what the cross-validated fit can replace."""
    cfg = inputs.config
    if cfg.selection == "holdout" or not inputs.splits.train:
        return False
    return not (cfg.head.hidden or cfg.head.pooling == "flatten" or cfg.label_smoothing)


def applies(inputs: TrainingInputs) -> bool:
    """Phase 1 of ``feature-extract`` fits this way: with ``selection="cv"``, or
    ``"auto"`` on small data, when :func:`fits_linear_head`."""
    if not fits_linear_head(inputs):
        return False
    if inputs.config.selection == "cv":
        return True
    per_class = torch.bincount(labels_of(inputs.splits.train), minlength=inputs.num_classes)
    return statistics.median(per_class.tolist()) < SMALL_PER_CLASS


def pools_validation(inputs: TrainingInputs) -> bool:
    """Whether the validation images are ours to train on (a split we made)."""
    return bool(inputs.splits.val) and inputs.splits.split.get("source") == "stratified"


@dataclass
class SelectedHead:
    """What :func:`fit_selected_head` returns: the head, its phase record, the
    selection (for metrics.json), and (when validation was pooled) the validation
    split's out-of-fold evaluation and, in the process that selected (rank 0), that of
    every pooled image (training first, then validation)."""

    head: ClassifierHead
    phase: PhaseResult
    selection: dict
    val: Evaluation | None = None
    pooled: Evaluation | None = None


def fit_selected_head(inputs: TrainingInputs, *, pool: bool = True) -> SelectedHead:
    """The head chosen by cross-validation and refitted on every image it may see:
    training plus (``pool`` and a split we made) validation images.

    Under torchrun every process shares the feature extraction; rank 0 alone selects
    and fits (seconds, on features) and hands the result to the others, so each
    process holds the same head, as one process would."""
    cfg, collective = inputs.config, inputs.runtime.collective
    freeze(inputs.backbone)
    set_bn_policy(inputs.backbone, "frozen")
    pooled = pool and pools_validation(inputs)
    examples = [(inputs.splits.train, "train")] + ([(inputs.splits.val, "val")] if pooled else [])
    x = [cached_features(inputs, ex, split) for ex, split in examples]
    views = None
    if pool:  # small data: mirror images are candidates too (cross-validation decides)
        views = [cached_features(inputs, ex, split, view="hflip") for ex, split in examples]
    torch.manual_seed(cfg.seed)
    head = create_head(inputs.backbone.feature_shape, inputs.num_classes, cfg.head)
    result = None
    if collective.is_main:  # the others wait: a head on features takes seconds
        views = None if views is None else torch.cat(views)[None]
        result = _select_and_fit(inputs, head, torch.cat(x), pooled, views)
    if collective.active:
        result = _share(inputs, head, result)
    return result


def _select_and_fit(inputs: TrainingInputs, head, x, pooled: bool, views) -> SelectedHead:
    examples = list(inputs.splits.train) + (list(inputs.splits.val) if pooled else [])
    y = labels_of(examples)
    started = time.perf_counter()
    weights = _sample_weight(inputs, y)
    selection = probe_head.select(
        x, y, inputs.num_classes, seed=inputs.config.seed, sample_weight=weights, views=views
    )
    model = probe_head.fit_candidate(selection.chosen, x, y, inputs.num_classes, weights, views)
    probe_head.load_into(head, model)
    head = head.to(inputs.device).eval()
    phase = _phase_record(selection, time.perf_counter() - started)
    _record_history(inputs, phase, head, x, y)
    _log_selection(selection, len(y), pooled)
    val = _oof_evaluation(inputs, selection, len(inputs.splits.train)) if pooled else None
    every = None
    if pooled and selection.oof_probabilities is not None:
        every = _evaluation(selection.oof_probabilities, y)
    record = {**selection.to_dict(), "images": len(y), "validation_pooled": pooled}
    return SelectedHead(head, phase, record, val, every)


def _share(inputs: TrainingInputs, head, mine: SelectedHead | None) -> SelectedHead:
    """Rank 0's head, phase and history row (as :func:`~.head.share_head` hands over
    an epoch-trained head), then its selection and validation evaluation, in every
    process."""
    c = inputs.runtime.collective
    phase = share_head(inputs, head, mine.phase if c.is_main else None)
    head = head.to(inputs.device).eval()
    selection = c.broadcast_json(mine.selection if c.is_main else None)
    has_val = c.broadcast_json(c.is_main and mine.val is not None)
    val = None
    if has_val:
        tensors = c.broadcast_tensors({"p": mine.val.probabilities} if c.is_main else None)
        val = _evaluation(tensors["p"], labels_of(inputs.splits.val))
    return SelectedHead(head, phase, selection, val, mine.pooled if c.is_main else None)


def _sample_weight(inputs: TrainingInputs, y: torch.Tensor):
    if inputs.config.class_weight != "balanced":
        return None
    from ..heads import balanced_class_weights

    return balanced_class_weights(y, inputs.num_classes).double()[y]


def _phase_record(selection: probe_head.Selection, seconds: float) -> PhaseResult:
    chosen = selection.chosen
    return PhaseResult(
        name="head",
        epochs_run=1,
        best_epoch=1,
        best_val_loss=chosen.log_loss,
        best_val_accuracy=chosen.accuracy,
        seconds=seconds,
        stopped=f"fitted to convergence ({chosen.name}, chosen by cross-validation)",
        converged=True,
    )


def _record_history(inputs, phase: PhaseResult, head, x, y) -> None:
    """One row: the refitted head on every image it saw, and the cross-validated
    scores in the validation columns."""
    history = stateful(inputs.callbacks).get("history")
    if history is None:
        return
    with torch.no_grad():
        logits = head(x.to(inputs.device))
        loss = float(head.loss(logits, y.to(inputs.device)))
        acc = float((head.probabilities(logits).argmax(1).cpu() == y).float().mean())
    history.rows.append(
        {
            "phase": "head",
            "epoch": 1,
            "phase_epoch": 1,
            "train_loss": loss,
            "train_acc": acc,
            "val_loss": phase.best_val_loss,
            "val_acc": phase.best_val_accuracy,
            "lr": None,
            "seconds": phase.seconds,
        }
    )


def _oof_evaluation(inputs, selection, n_train: int) -> Evaluation | None:
    if selection.oof_probabilities is None:
        return None
    return _evaluation(selection.oof_probabilities[n_train:], labels_of(inputs.splits.val))


def _evaluation(probs: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    loss = probe_head.log_loss(probs, labels)
    accuracy = float((probs.argmax(1) == labels).float().mean())
    return Evaluation(loss, accuracy, probs, labels)


def _log_selection(selection: probe_head.Selection, n: int, pooled: bool) -> None:
    chosen = selection.chosen
    pool = "training and validation images" if pooled else "training images"
    if not selection.folds:
        log.info("head: %s on %d %s (too few images to cross-validate)", chosen.name, n, pool)
        return
    log.info(
        "head: %s, chosen by %d-fold cross-validation on %d %s "
        "(accuracy %.3f +/- %.3f of %d candidates), refitted on all of them",
        chosen.name,
        selection.folds,
        n,
        pool,
        chosen.accuracy,
        chosen.accuracy_std,
        len(selection.candidates),
    )
