"""Strategy ``feature-extract``: the base as a fixed feature extractor; only the new
head learns, on features computed once. (Without ``--cut`` the advisor measured the
cut before this runs.) On small data the head is chosen by cross-validation on every
label (:mod:`transferkit.strategies.probe`)."""

from __future__ import annotations

from ..heads import TransferModel
from . import probe
from .base import StrategyResult, TrainingInputs
from .head import train_head


def run(inputs: TrainingInputs) -> StrategyResult:
    if probe.applies(inputs):
        chosen = probe.fit_selected_head(inputs)
        model = TransferModel(inputs.backbone, chosen.head)
        result = StrategyResult(model, [chosen.phase], frozen_base=True)
        result.selection = chosen.selection
        if chosen.val is not None:
            result.evaluations["val"] = chosen.val
        result.out_of_fold = chosen.pooled
        return result
    head, phase = train_head(inputs)
    return StrategyResult(TransferModel(inputs.backbone, head), [phase], frozen_base=True)
