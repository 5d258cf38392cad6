"""``diagnose``: every finding of the doctor on one data set, as a :class:`DoctorReport`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .balance import class_table, imbalance
from .duplicates import DEFAULT_RULE, NearRule, group_items, near_pairs
from .inputs import DoctorData, FeatureSpec, compute_features, load_items
from .mislabels import out_of_fold, suspects
from .outliers import outliers
from .thumbs import thumbnails

SHOWN = 10  # rows per finding in the text output


@dataclass
class DoctorReport:
    """What the doctor found. ``to_dict`` is the ``--json`` output; paths are as the
    data folder (or CSV) names them."""

    data: str
    classes: list[str]
    suspected_mislabels: list[dict] = field(default_factory=list)
    duplicate_groups: list[dict] = field(default_factory=list)
    outliers: list[dict] = field(default_factory=list)
    class_table: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    items: list = field(default_factory=list, repr=False)

    @property
    def leaks(self) -> list[dict]:
        return [g for g in self.duplicate_groups if g["leak"]]

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "summary": self.summary,
            "suspected_mislabels": self.suspected_mislabels,
            "duplicate_groups": self.duplicate_groups,
            "outliers": self.outliers,
            "classes": self.class_table,
        }


def diagnose(
    data,
    *,
    backbone="efficientnet_lite0",
    weights: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    val_split: float = 0.2,
    cache_dir: str | None = None,
    workers: int | None = None,
) -> DoctorReport:
    """Look at what the images of ``data`` are (see the package docstring).

    Args:
        data: a folder of class folders (or ``train/`` [``val/``] [``test/``]) or a CSV.
        backbone: the spec whose features are looked at (default: ``fit``'s).
        weights: local weights file, or ``"none"`` for random init.
        image_size: the input size (default: the backbone's).
        seed: the cross-validation folds and the validation split, as ``fit``'s.
        val_split: held out for validation as ``fit`` holds it out.
        cache_dir: the feature cache (default: ``fit``'s).
        workers: image-decoding processes.

    Example:
        >>> report = diagnose("photos/")  # doctest: +SKIP
        >>> report.suspected_mislabels[0]  # doctest: +SKIP
        {'path': 'cat/007.jpg', 'given': 'cat', 'suggested': 'dog', 'score': 0.93, ...}
    """
    started = time.perf_counter()
    doctor = load_items(data, val_split=val_split, seed=seed)
    spec = FeatureSpec(backbone, weights, image_size, cache_dir, workers, seed=seed)
    cache = compute_features(doctor, spec)
    report = findings(doctor, seed=seed)
    report.summary.update(cache, seconds=round(time.perf_counter() - started, 3))
    return report


def findings(doctor: DoctorData, *, seed: int = 0, rule: NearRule = DEFAULT_RULE) -> DoctorReport:
    """The findings on data whose features are computed."""
    kept = doctor.kept
    x = doctor.rows(kept)
    y = np.array([it.label for it in kept], dtype=np.int64)
    k = len(doctor.classes)
    oof = out_of_fold(x, y, k, seed)
    names = doctor.classes
    mislabels = []
    if oof.probabilities is not None:
        for s in suspects(oof.probabilities, y):
            it = kept[s.index]
            mislabels.append(
                {
                    "path": it.rel,
                    "given": names[s.given],
                    "suggested": names[s.suggested],
                    "score": round(s.score, 4),
                    "split": it.split,
                    "given_probability": round(s.given_probability, 4),
                    "suggested_probability": round(s.suggested_probability, 4),
                }
            )
    firsts = {}
    for it in doctor.items:
        firsts.setdefault(it.digest, it)
    thumbs = thumbnails([(firsts[d].path, d) for d in doctor.digests])
    pairs = near_pairs(thumbs, doctor.features, rule)
    groups = group_items(doctor.items, doctor.digests, pairs)
    far = [
        {
            "path": kept[o.index].rel,
            "score": round(o.score, 3),
            "given": names[kept[o.index].label],
            "nearest_class": names[o.nearest_class],
            "split": kept[o.index].split,
        }
        for o in outliers(x, y, k)
    ]
    table = class_table(names, kept, oof.probabilities, y)
    summary = {
        "images": len(doctor.items),
        "distinct_images": len(doctor.digests),
        "classes": len(names),
        "imbalance": imbalance(table),
        "cv_folds": oof.folds,
        "cv_accuracy": None if oof.accuracy is None else round(oof.accuracy, 4),
        "cv_penalty_c": oof.c,
        "leaks": sum(1 for g in groups if g.leak),
    }
    return DoctorReport(
        data=doctor.root,
        classes=list(names),
        suspected_mislabels=mislabels,
        duplicate_groups=[g.to_dict() for g in groups],
        outliers=far,
        class_table=table,
        summary=summary,
        items=doctor.items,
    )


def render_text(report: DoctorReport, shown: int = SHOWN) -> str:
    """The short ranked tables the ``doctor`` command prints."""
    s = report.summary
    lines = [
        f"Doctor: {report.data}: {s.get('images')} images, {s.get('classes')} classes, "
        f"features of {s.get('backbone')}; cross-validated accuracy "
        f"{_pct(s.get('cv_accuracy'))} ({s.get('cv_folds')} folds)"
    ]
    lines += _table(
        "Suspected mislabels",
        report.suspected_mislabels,
        ("score", "given", "suggested", "path"),
        shown,
    )
    groups = [
        {
            **g,
            "what": ("LEAK " if g["leak"] else "") + g["kind"],
            "files": ", ".join(
                f"{p} ({sp})" for p, sp in zip(g["paths"], g["splits"], strict=True)
            ),
        }
        for g in report.duplicate_groups
    ]
    lines += _table("Duplicate groups", groups, ("what", "files"), shown)
    lines += _table("Outliers", report.outliers, ("score", "nearest_class", "path"), shown)
    lines.append("Classes (images; difficulty = share the cross-validated head gets wrong):")
    for name, row in report.class_table.items():
        diff = row["difficulty"]
        lines.append(
            f"  {name}: {row['counts']['total']} images, difficulty "
            f"{'-' if diff is None else f'{diff:.0%}'}"
        )
    lines.append("Nothing was moved or deleted; --write-csv FILE writes a relabelling sheet.")
    return "\n".join(lines)


def _table(title: str, rows: list[dict], columns, shown: int) -> list[str]:
    if not rows:
        return [f"{title}: none"]
    more = f" (top {shown} of {len(rows)}; --json lists all)" if len(rows) > shown else ""
    out = [f"{title}: {len(rows)}{more}"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows[:shown])) for c in columns[:-1]}
    out.append("  " + "  ".join(c.ljust(widths.get(c, 0)) for c in columns).rstrip())
    for r in rows[:shown]:
        out.append("  " + "  ".join(str(r[c]).ljust(widths.get(c, 0)) for c in columns).rstrip())
    return out


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"
