"""Strategies execute a plan. Each is ``run(inputs: TrainingInputs) -> StrategyResult``
and is found by name in :data:`STRATEGIES`; a new one plugs in with
:func:`register_strategy` (``auto`` is not a strategy: the advisor turns it into one
of these before anything runs)."""

from __future__ import annotations

from collections.abc import Callable

from . import feature_extract, fine_tune
from .base import StrategyResult, TrainingInputs

STRATEGIES: dict[str, Callable[[TrainingInputs], StrategyResult]] = {
    "feature-extract": feature_extract.run,
    "fine-tune": fine_tune.run,
}


def register_strategy(name: str, run: Callable[[TrainingInputs], StrategyResult]) -> None:
    """Make ``run`` available as strategy ``name``."""
    STRATEGIES[name] = run


def get_strategy(name: str) -> Callable[[TrainingInputs], StrategyResult]:
    from ..errors import InputError

    if name not in STRATEGIES:
        raise InputError(f"strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


__all__ = ["STRATEGIES", "StrategyResult", "TrainingInputs", "get_strategy", "register_strategy"]
