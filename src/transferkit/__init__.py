"""transferkit: transfer learning for small labelled image sets, done right.

The public API. See README.md for the two-command start and docs/ for the guide.
"""

import gc as _gc

from ._version import __version__

# Why the collector pauses during these imports: torch, torchvision (its ops pull in
# torch._dynamo and sympy) and timm create ~600,000 objects that live as long as the
# process. Every full collection during the import scanned all of them again and
# freed nothing (six passes, ~0.6 s of a ~3.5 s import on 2 cores). The command-line
# entry point also freezes them (cli.entry_point); a library import leaves the
# collector's state as it found it.
_gc_was_enabled = _gc.isenabled()
_gc.disable()
try:
    from .backbones import Backbone, create_backbone, list_backbones
    from .config import FitConfig
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
finally:
    if _gc_was_enabled:
        _gc.enable()
    del _gc_was_enabled

__all__ = [
    "Backbone",
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
    "freeze",
    "list_backbones",
    "load",
    "load_run",
    "set_bn_policy",
    "summary",
    "train",
    "unfreeze",
]
