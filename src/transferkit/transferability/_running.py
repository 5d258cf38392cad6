"""Feeding batches through a model for measurement: eval mode, no grad, nothing kept."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..backbones.base import Backbone
from ..compute import nhwc_input, uses_channels_last
from ..errors import InputError


def root_module(model: nn.Module) -> nn.Module:
    """The module that layer names refer to: ``Backbone.model`` for a Backbone, so
    names match ``Backbone.all_blocks`` and ``cut_points``."""
    return model.model if isinstance(model, Backbone) else model


def images_of(batch) -> torch.Tensor:
    """A batch is an image tensor, or an (images, labels, ...) tuple as loaders yield."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise InputError(
            f"batches must yield image tensors or (images, ...) tuples, got {type(batch).__name__}"
        )
    return batch


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the pass; every module's own mode restored after,
    so measuring never changes how the caller's model trains."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def run_batches(
    model: nn.Module,
    batches: Iterable,
    *,
    max_batches: int | None = None,
    forward: Callable[[torch.Tensor], object] | None = None,
) -> int:
    """Feed each batch to ``forward`` (default: the model) on the model's device.

    Returns:
        How many batches ran.
    """
    if max_batches is not None and max_batches < 1:
        raise InputError(f"max_batches must be at least 1, got {max_batches}")
    param = next(model.parameters(), None)
    nhwc = uses_channels_last(model)
    forward = forward or model
    count = 0
    with inference(model):
        for batch in batches:
            if max_batches is not None and count >= max_batches:
                break
            x = images_of(batch)
            if param is not None:
                x = x.to(param.device, param.dtype if x.is_floating_point() else None)
            if nhwc:
                x = nhwc_input(x)
            forward(x)
            count += 1
    if count == 0:
        raise InputError("no batches to run: the data is empty")
    return count
