"""How well will a backbone transfer to this data? Scores measured before training.

Which strategy fits depends on how much data there is and how similar it is to the
pretraining data, and that similarity should be *measured*, not guessed. This package
measures it, cheaply enough to run per backbone and per cut layer before any training
(seconds on thousands of examples, on CPU):

- ``logme`` (``evidence``): the evidence of a Bayesian linear model on the features
  (You et al., ICML 2021). No training, no hyper-parameters; higher is better.
- ``knn_accuracy`` and ``linear_probe_accuracy`` (``probes``): cross-validated
  accuracies of the two simplest classifiers, in units a user understands.
- ``score_features`` / ``score_per_cut`` (``scores``): all three, timed.
- ``pooled_features_per_cut`` (``pooling``): one pass through the backbone yields
  pooled features at every candidate cut, so the scores can say "cut lower".
- ``bn_similarity`` (``bn_stats``): how far the data's activation statistics at each
  BatchNorm layer sit from the running statistics learned in pretraining.
- ``measure_per_cut`` (``measure``): pooled features and BN similarity in one pass.

Example:
    >>> import numpy as np
    >>> y = np.repeat([0, 1], 20)
    >>> x = np.random.default_rng(0).normal(size=(40, 3)) + np.where(y, 4, -4)[:, None]
    >>> score_features(x, y).knn_accuracy
    1.0
"""

from .bn_stats import BNSimilarity, bn_layers_by_cut, bn_similarity, gaussian_overlap
from .evidence import logme
from .measure import measure_per_cut
from .pooling import pooled_features_per_cut
from .probes import knn_accuracy, linear_probe_accuracy
from .scores import TransferScores, score_features, score_per_cut

__all__ = [
    "BNSimilarity",
    "TransferScores",
    "bn_layers_by_cut",
    "bn_similarity",
    "gaussian_overlap",
    "knn_accuracy",
    "linear_probe_accuracy",
    "logme",
    "measure_per_cut",
    "pooled_features_per_cut",
    "score_features",
    "score_per_cut",
]
