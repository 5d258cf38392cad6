"""The data report: what is usable, what is not and why, and whether we can train.

``assess`` holds the dataset-level rules (refuse: fewer than two classes, a class
without a usable image; warn: few images, strong imbalance, duplicates);
``DataReport`` carries the result to ``data check``, ``fit`` (which writes it to the
run directory) and library users.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .scanning import Candidate, ScannedFile, SkippedFile

SPLITS = ("train", "val", "test")
_LISTED = 10  # classes named in one warning line; the rest are counted
_MODE_NAMES = {
    "L": "grayscale (L)",
    "LA": "grayscale+alpha (LA)",
    "P": "palette (P)",
    "1": "1-bit (1)",
    "RGB": "RGB",
    "RGBA": "with alpha (RGBA)",
    "CMYK": "CMYK",
    "I;16": "16-bit (I;16)",
    "I": "32-bit integer (I)",
    "F": "float (F)",
    "exif_rotated": "EXIF-rotated upright",
}


@dataclass(frozen=True)
class DataPolicy:
    """Dataset-level thresholds (refusals are not configurable: they are not opinions).

    Attributes:
        few_images: warn when a class has fewer usable images than this (all splits
            that train or select the model: train + val).
        imbalance_ratio: warn when the largest class is this many times the smallest.
        few_val_images: warn when the validation split holds fewer images than this
            (none at all, or too few for its accuracy to mean much: with 20 images one
            more right answer moves it by 5 points).
    """

    few_images: int = 10
    imbalance_ratio: float = 10.0
    few_val_images: int = 20


@dataclass
class DataReport:
    """Everything ``data check`` shows. ``usable`` is True when the data can be trained on.

    Attributes:
        source: {"kind": folder|split-folders|csv|arrays, "path": ...}.
        classes: class names; a label is an index into this list.
        counts: usable images per split and class, e.g. {"train": {"cat": 40, ...}}.
        skipped: every file (or folder) not used, as {"path", "reason", "kind"}.
        warnings: problems worth knowing that do not stop training.
        errors: reasons the data cannot be trained on (empty when usable).
        image_mode: the mode images are converted to ("RGB" or "L").
        conversions: how many usable files need converting, by source mode, plus
            "exif_rotated" for photos turned upright.
        split: how validation was made (see ``splits.split_record``).
        scanned: candidate files examined.
        cache: verdict-cache statistics.
        metadata: a dataset's own description (written by ``transferkit datasets``).
    """

    source: dict
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    image_mode: str = "RGB"
    conversions: dict[str, int] = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    scanned: int = 0
    cache: dict = field(default_factory=dict)
    metadata: dict | None = None

    @property
    def usable(self) -> bool:
        return not self.errors

    @property
    def reason(self) -> str | None:
        """Why the data cannot be trained on, in one line; ``None`` when it can."""
        if not self.errors:
            return None
        more = len(self.errors) - 1
        return self.errors[0] + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")

    def totals(self) -> dict[str, int]:
        out = {s: sum(self.counts.get(s, {}).values()) for s in SPLITS}
        out["skipped"] = len(self.skipped)
        return out

    def to_dict(self) -> dict:
        """JSON-able; the layout ``data check --json`` prints and runs store."""
        return {
            "usable": self.usable,
            "reason": self.reason,
            "source": self.source,
            "classes": list(self.classes),
            "counts": self.counts,
            "totals": self.totals(),
            "skipped": list(self.skipped),
            "warnings": list(self.warnings),
            "errors": list(self.errors),
            "image_mode": self.image_mode,
            "conversions": self.conversions,
            "split": self.split,
            "scanned": self.scanned,
            "cache": self.cache,
            "metadata": self.metadata,
        }

    def write_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` (ASCII JSON, so any file name survives) to ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")


def count_by_class(files: list[ScannedFile], classes: list[str]) -> dict[str, dict[str, int]]:
    counts = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for f in files:
        counts[f.candidate.split][f.candidate.label] += 1
    return counts


def conversions(files: list[ScannedFile], image_mode: str) -> dict[str, int]:
    out: Counter = Counter()
    for f in files:
        if f.probe.mode != image_mode:
            out[f.probe.mode] += 1
        if f.probe.orientation != 1:
            out["exif_rotated"] += 1
    return dict(sorted(out.items()))


def assess(
    classes: list[str],
    counts: dict[str, dict[str, int]],
    *,
    candidates: list[Candidate],
    files: list[ScannedFile],
    splits_present: set[str],
    policy: DataPolicy,
) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the dataset as a whole."""
    if not classes:
        return [], []  # the source already said why
    fit = {c: counts["train"][c] + counts["val"][c] for c in classes}
    errors = _refusals(classes, fit, candidates)
    if errors:
        return errors, []
    warnings = [
        *_size_warnings(classes, fit, policy),
        *_validation_warnings(counts, policy),
        *_coverage_warnings(classes, counts, splits_present),
        *_duplicate_warnings(files),
    ]
    return errors, warnings


def _refusals(classes: list[str], fit: dict[str, int], candidates: list[Candidate]) -> list[str]:
    """Why the data cannot be trained on: a single class, or a class with no usable image."""
    errors = []
    if len(classes) == 1:
        errors.append(
            f"found only 1 class ({classes[0]!r}); a classifier needs at least 2 class folders"
        )
    empty = [c for c in classes if fit[c] == 0]
    if len(empty) == len(classes):
        return [*errors, "no usable images in any class"]
    offered = Counter(c.label for c in candidates if c.split in ("train", "val"))
    for c in empty:
        n = offered[c]
        errors.append(
            f"class {c!r} has no usable image ("
            + (f"{n} file{'s' * (n != 1)}, none usable)" if n else "empty folder)")
        )
    return errors


def _size_warnings(classes: list[str], fit: dict[str, int], policy: DataPolicy) -> list[str]:
    """Classes with few images (train + val), and strong imbalance between classes."""
    warnings = []
    few = [c for c in classes if 0 < fit[c] < policy.few_images]
    if few:
        shown = ", ".join(f"{c!r} ({fit[c]})" for c in few[:_LISTED])
        more = f" and {len(few) - _LISTED} more" if len(few) > _LISTED else ""
        warnings.append(
            f"few images in class {shown}{more}; under {policy.few_images} per class, "
            "results are unreliable"
        )
    big, small = max(classes, key=fit.get), min(classes, key=fit.get)
    if fit[small] and fit[big] / fit[small] >= policy.imbalance_ratio:
        warnings.append(
            f"strong class imbalance: {big!r} has {fit[big]} images, {small!r} "
            f"{fit[small]} (ratio {fit[big] / fit[small]:.1f}); accuracy will "
            "favour the large classes; consider --class-weight balanced or more data"
        )
    return warnings


def _validation_warnings(counts: dict[str, dict[str, int]], policy: DataPolicy) -> list[str]:
    """No validation images, or too few for their accuracy to mean much."""
    n = sum(counts["val"].values())
    if n == 0:
        return [
            "no validation images: nothing checks the model while it trains and "
            "validation accuracy cannot be measured; add images or a val/ folder"
        ]
    if n < policy.few_val_images:
        return [
            f"{n} validation image{'s' * (n != 1)}: accuracy on them means little; "
            "add images or a val/ folder"
        ]
    return []


def _coverage_warnings(
    classes: list[str], counts: dict[str, dict[str, int]], splits_present: set[str]
) -> list[str]:
    """A val or test split that lacks a class cannot measure scores on it."""
    warnings = []
    for split in ("val", "test"):
        missing = [c for c in classes if counts[split][c] == 0]
        if split in splits_present and missing:
            warnings.append(
                f"{split} has no images of class "
                + ", ".join(map(repr, missing))
                + "; its scores there cannot be measured"
            )
    return warnings


def _duplicate_warnings(files: list[ScannedFile]) -> list[str]:
    by_digest: dict[str, list[ScannedFile]] = defaultdict(list)
    for f in files:
        by_digest[f.digest].append(f)
    groups = [g for g in by_digest.values() if len(g) > 1]
    out = []
    conflicts = [g for g in groups if len({f.candidate.label for f in g}) > 1]
    if conflicts:
        g = conflicts[0]
        out.append(
            f"{len(conflicts)} image(s) appear under different classes, e.g. "
            + " and ".join(f.candidate.rel for f in g[:2])
            + "; such labels contradict each other"
        )
    copies = sum(len(g) - 1 for g in groups if g not in conflicts)
    if copies:
        g = next(g for g in groups if g not in conflicts)
        out.append(
            f"{copies} file(s) are exact copies of others in the same class, e.g. "
            + " and ".join(f.candidate.rel for f in g[:2])
            + "; copies count twice in training"
        )
    return out


def skipped_dicts(skipped: list[SkippedFile]) -> list[dict]:
    return [s.to_dict() for s in sorted(skipped, key=lambda s: (s.path, s.reason))]


def render_text(report: DataReport) -> str:
    """A human-readable report; file names that are not valid UTF-8 are shown with '?'."""
    lines = [f"Data: {report.source.get('path')} ({report.source.get('kind')})"]
    if report.classes:
        lines.append(f"Classes ({len(report.classes)}): {', '.join(report.classes)}")
        shown = [s for s in SPLITS if any(report.counts.get(s, {}).values())] or ["train"]
        width = max(len(c) for c in [*report.classes, "class", "total"]) + 2
        lines.append("  " + "class".ljust(width) + "".join(s.rjust(8) for s in shown))
        for c in report.classes:
            lines.append(
                "  " + c.ljust(width) + "".join(str(report.counts[s][c]).rjust(8) for s in shown)
            )
        totals = report.totals()
        lines.append("  " + "total".ljust(width) + "".join(str(totals[s]).rjust(8) for s in shown))
    if report.split:
        s = report.split
        how = (
            f"stratified {s.get('fraction')} of train, seed {s.get('seed')}"
            if s.get("source") == "stratified"
            else s.get("source")
        )
        lines.append(f"Validation: {how}")
    if report.conversions:
        conv = ", ".join(f"{n} {_MODE_NAMES.get(m, m)}" for m, n in report.conversions.items())
        lines.append(f"Converted on load (to {report.image_mode}): {conv}")
    if report.skipped:
        lines.append(f"Not used ({len(report.skipped)}):")
        lines += [f"  {s['path']}: {s['reason']}" for s in report.skipped]
    if report.warnings:
        lines.append("Warnings:")
        lines += [f"  - {w}" for w in report.warnings]
    if report.usable:
        lines.append(f"OK: usable for training ({report.totals()['train']} training images).")
    else:
        lines.append("NOT usable for training:")
        lines += [f"  - {e}" for e in report.errors]
    text = "\n".join(lines)
    return text.encode("utf-8", "replace").decode("utf-8")
