"""Strategy ``feature-extract``: the base as a fixed feature extractor; only the new
head learns, on features computed once. (Without ``--cut`` the advisor measured the
cut before this runs.)"""

from __future__ import annotations

from ..heads import TransferModel
from .base import StrategyResult, TrainingInputs
from .head import train_head


def run(inputs: TrainingInputs) -> StrategyResult:
    head, phase = train_head(inputs)
    return StrategyResult(TransferModel(inputs.backbone, head), [phase], frozen_base=True)
