"""Training strategies (DESIGN R1-R6). Each takes a FitContext, returns a StrategyResult."""

from __future__ import annotations

import torch

from . import auto, feature_extract, fine_tune
from .common import FitContext, StrategyResult

RUNNERS = {"feature-extract": feature_extract.run, "fine-tune": fine_tune.run, "auto": auto.run}


def run_strategy(name: str, ctx: FitContext) -> StrategyResult:
    """Run strategy ``name``; the model comes back in the default memory layout.

    Training and extraction run NHWC where that is faster (``Compute.prepare``); a
    model at rest is contiguous again, so the fitted model and the same model saved
    and loaded compute bit-identical predictions."""
    result = RUNNERS[name](ctx)
    result.model.to(memory_format=torch.contiguous_format)
    return result


__all__ = ["RUNNERS", "FitContext", "StrategyResult", "run_strategy"]
