"""transferkit: transfer learning for small labelled image sets, done right.

The public API. See README.md for the two-command start and docs/ for the guide.

``import transferkit`` is cheap: the public names below are imported on first use
(PEP 562), so ``transferkit --help`` and a script that only needs ``__version__`` do
not pay for torch, timm and matplotlib (2-3 s). ``from transferkit import X`` works as
usual.
"""

from __future__ import annotations

import gc as _gc
import importlib as _importlib
import sys as _sys
import types as _types
from typing import TYPE_CHECKING

from ._version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "Backbone": "backbones",
    "create_backbone": "backbones",
    "list_backbones": "backbones",
    "FitConfig": "config",
    "DoctorReport": "doctor",
    "diagnose": "doctor",
    "InputError": "errors",
    "MissingDependencyError": "errors",
    "TransferkitError": "errors",
    "WeightsUnavailableError": "errors",
    "TransferClassifier": "estimator",
    "load": "estimator",
    "create_optimizer": "freezing",
    "freeze": "freezing",
    "set_bn_policy": "freezing",
    "summary": "freezing",
    "unfreeze": "freezing",
    "Run": "runs",
    "load_run": "runs",
    "TrainResult": "train",
    "train": "train",
}

__all__ = [  # the names of _PUBLIC and __version__ (tests/test_startup.py checks)
    "Backbone",
    "DoctorReport",
    "FitConfig",
    "InputError",
    "MissingDependencyError",
    "Run",
    "TrainResult",
    "TransferClassifier",
    "TransferkitError",
    "WeightsUnavailableError",
    "__version__",
    "create_backbone",
    "create_optimizer",
    "diagnose",
    "freeze",
    "list_backbones",
    "load",
    "load_run",
    "set_bn_policy",
    "summary",
    "train",
    "unfreeze",
]

if TYPE_CHECKING:  # what editors and type checkers see; nothing runs here
    from .backbones import Backbone, create_backbone, list_backbones
    from .config import FitConfig
    from .doctor import DoctorReport, diagnose
    from .errors import (
        InputError,
        MissingDependencyError,
        TransferkitError,
        WeightsUnavailableError,
    )
    from .estimator import TransferClassifier, load
    from .freezing import create_optimizer, freeze, set_bn_policy, summary, unfreeze
    from .runs import Run, load_run
    from .train import TrainResult, train


def __getattr__(name: str):
    """Import a public name's module on first use and keep the name here."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    value = getattr(_import_heavy(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(_types.ModuleType):
    """``transferkit.train`` is the function, as ``from transferkit import train``
    promises, although a submodule of that name exists: importing the submodule
    (``fit`` does) would otherwise replace the function with the module here."""

    def __setattr__(self, name: str, value) -> None:
        if name == "train" and isinstance(value, _types.ModuleType):
            value = value.train
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def _import_heavy(module: str):
    """Import with the garbage collector paused. torch, torchvision (its ops pull in
    torch._dynamo and sympy) and timm create ~600,000 objects that live as long as the
    process; every full collection during the import scanned all of them again and
    freed nothing (six passes, ~0.6 s of a ~3.5 s import on 2 cores). The collector's
    state is restored afterwards: a library import must not change it for the user's
    process (the ``transferkit`` command also freezes them: ``cli.entry_point``)."""
    was_enabled = _gc.isenabled()
    _gc.disable()
    try:
        return _importlib.import_module(module)
    finally:
        if was_enabled:
            _gc.enable()
