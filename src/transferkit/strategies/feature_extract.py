"""Strategy ``feature-extract``: the base as a fixed feature extractor (seed 003's
first use); only the new head learns, on features computed once. Without ``--cut``
the cut is chosen by measurement (strategies/auto.py), not assumed to be the top."""

from __future__ import annotations

from ..heads import TransferModel
from .common import FitContext, StrategyResult, train_head


def run(ctx: FitContext) -> StrategyResult:
    decision = None
    if ctx.config.cut is None and len(ctx.backbone.blocks) > 1:
        from .auto import choose_feature_cut

        decision = choose_feature_cut(ctx)
    head, phase = train_head(ctx)
    return StrategyResult(
        TransferModel(ctx.backbone, head), [phase], frozen_base=True, decision=decision
    )
