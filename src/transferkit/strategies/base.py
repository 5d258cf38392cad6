"""What every strategy reads and returns, and the data plumbing they share.

A strategy is a function ``run(inputs) -> StrategyResult``. It reads
:class:`TrainingInputs` (frozen: the backbone already cut as planned, the splits, the
resolved settings, the plan, where to compute, the feature cache, the callbacks) and
never changes them; everything it produces is in its result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..features import Extraction, FeatureCache, representation_for
from ..heads import TransferModel
from ..training import Callback, Evaluation, PhaseResult, Runtime
from ..training.callbacks import clone_state


@dataclass(frozen=True)
class TrainingInputs:
    """Everything a strategy needs, fixed before it runs.

    Attributes:
        backbone: the ``Backbone``, cut where the plan says.
        splits: the ``DatasetSplits`` (train, val, test, classes).
        config: the ``FitConfig`` with the plan's choices filled in.
        plan: the advisor's :class:`~transferkit.advisor.Plan`.
        runtime: device, precision and layout, and the other torchrun processes.
        features: the feature cache the frozen base's features go through.
        callbacks: run for every phase (history, progress, checkpoints, hooks).
    """

    backbone: object
    splits: object
    config: object
    plan: object
    runtime: Runtime
    features: FeatureCache
    callbacks: Sequence = ()

    @property
    def num_classes(self) -> int:
        return len(self.splits.classes)

    @property
    def device(self) -> torch.device:
        return self.runtime.compute.device


@dataclass
class StrategyResult:
    """The trained model and how each phase went.

    ``frozen_base``: the base stayed frozen, so the final model's predictions on the
    splits can come from cached features. ``selection``: how the model was chosen
    by cross-validation, when it was. ``evaluations``: a split's evaluation the
    strategy made itself (out-of-fold, for validation images it trained on).
    ``out_of_fold``: when validation was pooled, the out-of-fold evaluation of every
    image the head trained on (training, then validation), in the selecting process."""

    model: TransferModel
    phases: list[PhaseResult] = field(default_factory=list)
    frozen_base: bool = True
    selection: dict | None = None
    evaluations: dict = field(default_factory=dict)
    out_of_fold: Evaluation | None = None


def image_dataset(inputs: TrainingInputs, examples, *, train: bool):
    """Examples as preprocessed images (with augmentation when training and asked)."""
    from ..data import AugmentConfig, ImageDataset, create_transform

    augment = AugmentConfig(enabled=train and inputs.config.augment)
    transform = create_transform(
        inputs.backbone.data_config,
        train=train,
        image_size=inputs.config.image_size,
        augment=augment,
    )
    return ImageDataset(examples, transform, channels=inputs.backbone.input_size[0])


def make_loader(inputs: TrainingInputs, dataset, *, shuffle: bool, **kwargs):
    """A loader with the fit's batch size, workers and device (``kwargs``:
    ``batch_size``, ``seed``, ``sampler`` override)."""
    from ..data import create_loader

    kwargs.setdefault("batch_size", inputs.config.batch_size)
    return create_loader(
        dataset,
        shuffle=shuffle,
        workers=inputs.config.workers,
        device=inputs.device.type,
        **kwargs,
    )


def extraction(inputs: TrainingInputs, description: str) -> Extraction:
    """How this fit's frozen base turns images into cached features."""
    return Extraction(
        image_size=inputs.config.image_size,
        representation=representation_for(inputs.config.head.pooling),
        compute=inputs.runtime.compute,
        loader=lambda ds, bs: make_loader(inputs, ds, shuffle=False, batch_size=bs),
        batch_size=max(inputs.config.batch_size, 64),
        description=description,
    )


def cached_features(
    inputs: TrainingInputs, examples, split: str, collective=None, *, view: str | None = None
):
    """Features of ``examples`` through the frozen base, from the cache when possible.

    ``view="hflip"``: of each image's mirror image instead (an augmented view, cached
    under its own key beside the image's).

    With several processes (``collective``, default the run's) all of them must call
    this; they share the extraction and only rank 0 gets the features (the others
    get ``None``)."""
    collective = inputs.runtime.collective if collective is None else collective
    if not examples:
        return torch.empty(0)
    dataset = image_dataset(inputs, examples, train=False)
    keys = [e.digest for e in examples]
    what = f"features ({split})"
    if view is not None:
        dataset, keys = VIEWS[view](dataset), [f"{k}:{view}" for k in keys]
        what = f"features ({split}, {view} views)"
    array = inputs.features.get(
        inputs.backbone, dataset, keys, extraction(inputs, what), collective=collective
    )
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


class MirroredImages(torch.utils.data.Dataset):
    """A dataset's images flipped left to right (labels as they are)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, label = self.dataset[index]
        return x.flip(-1), label


VIEWS = {"hflip": MirroredImages}


def labels_of(examples) -> torch.Tensor:
    return torch.tensor([e.label for e in examples], dtype=torch.long)


def objective(inputs: TrainingInputs, head):
    """What both phases train by: the head's loss with the fit's label smoothing and,
    with ``class_weight="balanced"``, each class weighted by the training labels
    (``n_samples / (n_classes * count)``)."""
    from ..heads import balanced_class_weights
    from ..training import Objective

    weights = None
    if inputs.config.class_weight == "balanced":
        weights = balanced_class_weights(labels_of(inputs.splits.train), inputs.num_classes)
    return Objective.of_head(head, inputs.config.label_smoothing, weights)


def has_validation(inputs: TrainingInputs) -> bool:
    """Whether there are validation images to stop early and keep the best epoch by.
    Without them a phase runs all its epochs and keeps the last."""
    return bool(inputs.splits.val)


class KeepLast(Callback):
    """In place of early stopping when there are no validation images: every epoch
    is the one kept (checkpoints save it as the best), and the phase runs them all."""

    order = 10

    def on_phase_start(self, state) -> None:
        if not state.resumed:
            state.best_state = clone_state(state.model)

    def on_validation_end(self, state) -> None:
        state.best_state = clone_state(state.model)
        state.improved = True
        state.result.best_epoch = state.epoch


def stopping_rule(inputs: TrainingInputs, early_stopping: Callback) -> Callback:
    """``early_stopping``, or :class:`KeepLast` without validation images (nothing
    to judge an epoch by: a loss of NaN, not of 0)."""
    return early_stopping if has_validation(inputs) else KeepLast()


def kept_last(inputs: TrainingInputs, result: PhaseResult) -> PhaseResult:
    """``result`` as it is, or, for a phase without validation images, marked as
    keeping its last epoch, with no validation scores (NaN, not a loss of 0)."""
    if not has_validation(inputs):
        result.best_epoch = result.epochs_run
        result.best_val_loss = result.best_val_accuracy = math.nan
    return result


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int | None):
    """Batches of in-memory features, in a seeded random order (``seed=None``: in order)."""
    order = torch.arange(len(y))
    if seed is not None:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def evaluate_split(inputs: TrainingInputs, result: StrategyResult, examples, split: str):
    """Loss, accuracy and per-example probabilities of the final model on ``examples``:
    on cached features when the base stayed frozen, else on the images. Rank 0 alone
    calls this under torchrun (no other process takes part)."""
    from ..compute import as_compute
    from ..distributed import SINGLE
    from ..training import Objective, Runtime, evaluate

    model, head = result.model, result.model.head
    y = labels_of(examples)
    objective = Objective.of_head(head)
    if result.frozen_base:
        x = cached_features(inputs, examples, split, collective=SINGLE)
        batches = [(x[i : i + 1024], y[i : i + 1024]) for i in range(0, len(y), 1024)]
        runtime = Runtime(as_compute(inputs.device))
        return evaluate(head, batches, objective, runtime=runtime, keep=True)
    loader = make_loader(inputs, image_dataset(inputs, examples, train=False), shuffle=False)
    return evaluate(model, loader, objective, runtime=Runtime(inputs.runtime.compute), keep=True)
