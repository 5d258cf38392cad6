"""Pooled features per cut and BN similarity from one pass over the user's images.

Running the backbone over the data is what costs; ``recommend`` needs both
measurements, so they share the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from torch import nn

from ..features.extract import collect_features
from .bn_stats import BNCapture, BNSimilarity
from .pooling import every_cut


def measure_per_cut(
    backbone: nn.Module | Callable[[], nn.Module],
    batches: Iterable,
    cuts: Sequence[str] | None = None,
    *,
    max_batches: int | None = None,
    **kwargs,
) -> tuple[dict[str, np.ndarray], BNSimilarity]:
    """What :func:`pooled_features_per_cut` and :func:`bn_similarity` return, in one pass.

    The pass runs the whole backbone (no early stop), so every BN layer is measured.
    Other keyword arguments go to :func:`~transferkit.features.iter_features`
    (``compute``, ``description``).

    Example:
        >>> feats, bn = measure_per_cut(backbone, loader)  # doctest: +SKIP
        >>> scores = score_per_cut(feats, labels)  # doctest: +SKIP
        >>> bn.per_cut(bn_layers_by_cut(backbone))  # doctest: +SKIP
    """
    model = backbone if isinstance(backbone, nn.Module) else backbone()
    cuts = every_cut(model) if cuts is None else list(cuts)
    with BNCapture(model) as stats:
        feats = collect_features(
            model, batches, cuts=cuts, max_batches=max_batches, stop_early=False, **kwargs
        )
    return feats, stats.similarity()
