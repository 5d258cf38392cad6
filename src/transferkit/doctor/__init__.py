"""The data doctor: what the images of a labelled set *are*, on cached features.

Findings: suspected mislabels (out-of-fold probabilities, confident-learning
thresholds per class), duplicate and near-duplicate groups (content digest, feature
similarity and a perceptual hash) with the groups that span splits flagged as leaks,
outliers (far from every class), and class balance and difficulty. ``next`` ranks
unlabelled images for labelling (uncertainty and diversity). Nothing is ever moved
or deleted: the doctor reports, the user decides. See docs/doctor.md.

Importing this package is cheap; the public names load their modules on first use.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "DoctorReport": "report",
    "diagnose": "report",
    "write_relabel_csv": "sheet",
    "rank_next": "active",
    "NextReport": "active",
    "find_leaks": "leaks",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
