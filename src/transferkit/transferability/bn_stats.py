"""Similarity to pretraining: the data's statistics at BN layers vs their running stats.

A BatchNorm layer's running mean and variance summarise what its input looked like
on the pretraining data. If the user's images give statistics far from those, the
features from that depth on were learned for different data: the "dissimilar data"
case of choosing a strategy, where one cuts lower or fine-tunes everything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..backbones.base import Backbone
from ..features.extract import collect_features, root_module

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


@dataclass
class BNSimilarity:
    """How close the data's statistics are to a backbone's BN running statistics.

    Attributes:
        per_layer: ``(layer_name, similarity)`` in module order, names relative to
            ``Backbone.model``; 1 for identical statistics, towards 0 for disjoint.
        overall: their mean (NaN when no BN layer ran).
    """

    per_layer: list[tuple[str, float]]
    overall: float

    def per_cut(self, layers_by_cut: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """Mean similarity of each cut's layers (NaN where none of them ran).

        ``layers_by_cut`` maps a cut to layer names, e.g. :func:`bn_layers_by_cut`.
        """
        sims = dict(self.per_layer)
        out = {}
        for cut, layers in layers_by_cut.items():
            values = [sims[name] for name in layers if name in sims]
            out[cut] = float(np.mean(values)) if values else math.nan
        return out

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes None."""
        return {
            "per_layer": [[name, sim] for name, sim in self.per_layer],
            "overall": self.overall if math.isfinite(self.overall) else None,
        }


def bn_layers_by_cut(backbone: Backbone) -> dict[str, list[str]]:
    """The BN layers inside each block of ``backbone``, keyed by cut point, so that
    ``BNSimilarity.per_cut`` tells at which depth the data stops looking familiar."""
    names = [n for n, m in backbone.model.named_modules() if isinstance(m, BN_TYPES)]
    return {
        b.name: [n for n in names if any(n == m or n.startswith(m + ".") for m in b.modules)]
        for b in backbone.all_blocks
    }


def gaussian_overlap(
    mu1: np.ndarray, var1: np.ndarray, mu2: np.ndarray, var2: np.ndarray
) -> np.ndarray:
    """Bhattacharyya coefficient of N(mu1, var1) and N(mu2, var2), elementwise.

    Symmetric, unchanged when a channel is rescaled, 1 for identical Gaussians and
    towards 0 as they separate (it is exp(-Bhattacharyya distance)). Bounded per
    channel, so one dead channel cannot dominate a layer's mean as an unbounded KL
    divergence would.
    """
    total = var1 + var2
    return np.sqrt(2 * np.sqrt(var1 * var2) / total) * np.exp(-((mu1 - mu2) ** 2) / (4 * total))


class _ChannelMoments:
    """Forward pre-hook summing a layer's input per channel, in float64, on the
    layer's device (read back once, by ``mean_var``, not once per batch and layer)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: torch.Tensor | float = 0.0
        self.sumsq: torch.Tensor | float = 0.0

    def __call__(self, _module: nn.Module, inputs: tuple) -> None:
        x = inputs[0].detach().double()
        x = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, everything else)
        self.sum = self.sum + x.sum(1)
        self.sumsq = self.sumsq + (x * x).sum(1)
        self.count += x.shape[1]

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        mean = (self.sum / self.count).cpu().numpy()
        return mean, np.maximum((self.sumsq / self.count).cpu().numpy() - mean**2, 0.0)


class BNCapture:
    """Forward pre-hooks that accumulate the input statistics of every BN layer.

    Use as a context manager around a forward pass over the data
    (:func:`~transferkit.features.collect_features`); then :meth:`similarity`.
    """

    def __init__(self, model: nn.Module):
        self.layers = [
            (n, m)
            for n, m in root_module(model).named_modules()
            if isinstance(m, BN_TYPES) and m.running_mean is not None
        ]
        self.moments = {name: _ChannelMoments() for name, _ in self.layers}
        self._handles: list = []

    def __enter__(self) -> BNCapture:
        self._handles = [m.register_forward_pre_hook(self.moments[name]) for name, m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def similarity(self) -> BNSimilarity:
        per_layer = []
        for name, bn in self.layers:
            if self.moments[name].count == 0:
                continue  # pruned by a cut, or unused by this forward
            mean, var = self.moments[name].mean_var()
            ref_mean = bn.running_mean.detach().double().cpu().numpy()
            ref_var = bn.running_var.detach().double().cpu().numpy()
            overlap = gaussian_overlap(mean, var + bn.eps, ref_mean, ref_var + bn.eps)
            per_layer.append((name, float(overlap.mean())))
        overall = float(np.mean([sim for _, sim in per_layer])) if per_layer else math.nan
        return BNSimilarity(per_layer=per_layer, overall=overall)


def bn_similarity(
    backbone: nn.Module, batches: Iterable, *, max_batches: int | None = None
) -> BNSimilarity:
    """Compare the data's per-channel mean/variance at every BN layer's input with
    that layer's running mean/variance.

    The model runs in eval mode without gradients, so each layer sees what it sees
    at inference (earlier BN layers normalising with their running statistics);
    modes are restored afterwards.

    Args:
        backbone: a ``Backbone`` or any torch module with BatchNorm layers.
        batches: preprocessed image tensors, or tuples whose first item is one.
        max_batches: stop after this many batches.

    Returns:
        Per layer, the mean over channels of :func:`gaussian_overlap` between
        N(data mean, data var + eps) and N(running mean, running var + eps), with
        the layer's own ``eps`` as BN adds it; and the mean over layers.
    """
    with BNCapture(backbone) as capture:
        # the pass is what counts: its outputs are pooled (cheap) and dropped
        collect_features(backbone, batches, max_batches=max_batches)
    return capture.similarity()
