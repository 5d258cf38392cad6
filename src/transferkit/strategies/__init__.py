"""Training strategies (DESIGN R1-R6). Each takes a FitContext, returns a StrategyResult."""

from __future__ import annotations

from . import auto, feature_extract, fine_tune
from .common import FitContext, StrategyResult

RUNNERS = {"feature-extract": feature_extract.run, "fine-tune": fine_tune.run, "auto": auto.run}


def run_strategy(name: str, ctx: FitContext) -> StrategyResult:
    return RUNNERS[name](ctx)


__all__ = ["RUNNERS", "FitContext", "StrategyResult", "run_strategy"]
