"""transferkit: transfer learning for small labelled image sets, done right.

The public API. See README.md for the two-command start and docs/ for the guide.
"""

__version__ = "0.1.0"

from .backbones import Backbone, create_backbone, list_backbones
from .config import FitConfig
from .errors import InputError, MissingDependencyError, TransferkitError, WeightsUnavailableError
from .estimator import TransferClassifier, load
from .freezing import create_optimizer, freeze, set_bn_policy, summary, unfreeze
from .runs import load_run

__all__ = [
    "Backbone",
    "FitConfig",
    "InputError",
    "MissingDependencyError",
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
    "unfreeze",
]
