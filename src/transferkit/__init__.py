"""transferkit: transfer learning for small labelled image sets, done right.

The public API. See README.md for the two-command start and docs/ for the guide.
"""

from .backbones import Backbone, create_backbone, list_backbones
from .errors import InputError, MissingDependencyError, TransferkitError, WeightsUnavailableError
from .freezing import create_optimizer, freeze, set_bn_policy, summary, unfreeze

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "InputError",
    "MissingDependencyError",
    "TransferkitError",
    "WeightsUnavailableError",
    "__version__",
    "create_backbone",
    "create_optimizer",
    "freeze",
    "list_backbones",
    "set_bn_policy",
    "summary",
    "unfreeze",
]
