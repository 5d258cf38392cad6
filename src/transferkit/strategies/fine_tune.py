"""Strategy ``fine-tune``: two phases. The head first trains to convergence on the
frozen base (R1); only then is the base (all of it or its top blocks) unfrozen and
trained end-to-end, gently (R2-R4)."""

from __future__ import annotations

from .common import FitContext, StrategyResult, fine_tune, train_head


def run(ctx: FitContext) -> StrategyResult:
    head, phase1 = train_head(ctx)
    model, phase2 = fine_tune(ctx, head)
    return StrategyResult(model, [phase1, phase2], frozen_base=False)
