"""Features: the one extraction path (:mod:`.extract`), the torch-free on-disk store
(:mod:`.store`) and the cache that joins them (:mod:`.cache`)."""

from .cache import Extraction, FeatureCache
from .extract import collect_features, iter_features, pool, representation_for
from .store import CacheStats, FeatureStore, default_cache_dir, model_key

__all__ = [
    "CacheStats",
    "Extraction",
    "FeatureCache",
    "FeatureStore",
    "collect_features",
    "default_cache_dir",
    "iter_features",
    "model_key",
    "pool",
    "representation_for",
]
