"""What a source gives before any decoding: labelled candidate files, and what is
already known to be unusable."""

from __future__ import annotations

from dataclasses import dataclass, field

from .scanning import Candidate, SkippedFile


@dataclass
class RawSource:
    """Labelled candidates before any decoding.

    Attributes:
        kind: "folder", "split-folders", "csv" or "arrays".
        root: where relative paths in the report start.
        classes: class names; a label's index is its position here.
        candidates: files to decode-check, each with its class and split.
        skipped: files and folders already known to be unusable, with reasons.
        splits: the splits the source itself provides ("train" always).
        errors: dataset-level reasons the data cannot be trained on.
        metadata: contents of a ``transferkit-dataset.json`` found at the root.
    """

    kind: str
    root: str
    classes: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    splits: set[str] = field(default_factory=lambda: {"train"})
    errors: list[str] = field(default_factory=list)
    metadata: dict | None = None
