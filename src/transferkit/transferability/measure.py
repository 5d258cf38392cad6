"""Pooled features per cut and BN similarity from one pass over the user's images.

Running the backbone over the data is what costs; ``recommend`` needs both
measurements, so they share the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from torch import nn

from ._running import run_batches
from .bn_stats import BNCapture, BNSimilarity
from .pooling import CutCapture


def measure_per_cut(
    backbone: nn.Module | Callable[[], nn.Module],
    batches: Iterable,
    cuts: Sequence[str] | None = None,
    *,
    max_batches: int | None = None,
) -> tuple[dict[str, np.ndarray], BNSimilarity]:
    """What :func:`pooled_features_per_cut` and :func:`bn_similarity` return, in one pass.

    The pass runs the whole backbone (no early stop), so every BN layer is measured.

    Example:
        >>> feats, bn = measure_per_cut(backbone, loader)  # doctest: +SKIP
        >>> scores = score_per_cut(feats, labels)  # doctest: +SKIP
        >>> bn.per_cut(bn_layers_by_cut(backbone))  # doctest: +SKIP
    """
    model = backbone if isinstance(backbone, nn.Module) else backbone()
    with CutCapture(model, cuts, stop_early=False) as capture, BNCapture(model) as stats:
        count = run_batches(model, batches, max_batches=max_batches, forward=capture.forward)
    return capture.features(count), stats.similarity()
