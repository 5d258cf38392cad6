"""The strategy advisor: measure the data against a backbone, then plan the fit.

- :mod:`.measure`: one pass over (a sample of) the training images: pooled features
  and transferability scores at every cut, BatchNorm-statistics similarity;
- :mod:`.decide`: the choice by data size x similarity, with its reason;
- :mod:`.memory`: decisions remembered for the same data and settings;
- :mod:`.plan`: the fixed :class:`Plan` a fit follows, made before any strategy runs.
"""

from .decide import BN_SIMILAR, SAME_AS_BEST, SMALL_PER_CLASS, Decision, decide_from
from .measure import MAX_MEASURE_IMAGES, Measurement, measure, measure_splits, suggest_image_size
from .memory import AdviceStore
from .plan import Plan, decide, make_plan

__all__ = [
    "BN_SIMILAR",
    "MAX_MEASURE_IMAGES",
    "SAME_AS_BEST",
    "SMALL_PER_CLASS",
    "AdviceStore",
    "Decision",
    "Measurement",
    "Plan",
    "decide",
    "decide_from",
    "make_plan",
    "measure",
    "measure_splits",
    "suggest_image_size",
]
