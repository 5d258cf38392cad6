"""Strategy ``feature-extract``: the base as a fixed feature extractor (seed 003's
first use); only the new head learns, on features computed once."""

from __future__ import annotations

from ..heads import TransferModel
from .common import FitContext, StrategyResult, train_head


def run(ctx: FitContext) -> StrategyResult:
    head, phase = train_head(ctx)
    return StrategyResult(TransferModel(ctx.backbone, head), [phase], frozen_base=True)
