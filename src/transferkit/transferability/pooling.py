"""Globally pooled features at several cut layers from one pass over the images
(the features package's one extraction path, at every cut)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from torch import nn

from ..features.extract import collect_features


def pooled_features_per_cut(
    backbone: nn.Module | Callable[[], nn.Module],
    batches: Iterable,
    cuts: Sequence[str] | None = None,
    *,
    max_batches: int | None = None,
) -> dict[str, np.ndarray]:
    """Globally average-pooled features at each cut, from one pass over the images.

    Forward hooks catch each cut's output, so the images run through the backbone
    once, not once per cut, and each batch stops as soon as every cut has run. The
    model runs in eval mode without gradients; its modes are restored afterwards.

    Args:
        backbone: a ``Backbone`` (or any module), or a zero-argument factory of one.
            A backbone already cut below a requested cut cannot produce it.
        batches: image tensors (B, C, H, W), or tuples whose first item is one,
            preprocessed with the backbone's own data config. Row order follows the
            batches.
        cuts: cut points (``Backbone.cut_points``) or module names; ``None``: all
            of the backbone's cut points.
        max_batches: stop after this many batches.

    Returns:
        ``{cut: (N, C) float32 array}`` in the order of ``cuts``.

    Example:
        >>> from transferkit import create_backbone  # doctest: +SKIP
        >>> bb = create_backbone("resnet18", weights="none")  # doctest: +SKIP
        >>> x = torch.randn(4, 3, 32, 32)  # doctest: +SKIP
        >>> feats = pooled_features_per_cut(bb, [x], ["layer1", "layer4"])  # doctest: +SKIP
        >>> {cut: f.shape for cut, f in feats.items()}  # doctest: +SKIP
        {'layer1': (4, 64), 'layer4': (4, 512)}
    """
    model = backbone if isinstance(backbone, nn.Module) else backbone()
    cuts = every_cut(model) if cuts is None else list(cuts)
    return collect_features(model, batches, cuts=cuts, max_batches=max_batches)


def every_cut(model: nn.Module) -> list[str]:
    """A backbone's cut points (what ``cuts=None`` means here); a plain module has none,
    and extraction then asks for at least one."""
    return list(getattr(model, "cut_points", None) or [])
