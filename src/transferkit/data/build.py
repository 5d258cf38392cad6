"""From a source to clean, split examples plus the report: ``load_data``, ``check_data``.

The one pipeline both entry points share: resolve the source, decode-check every
file, drop val/test copies of training images, hold out validation, then judge the
dataset as a whole. ``check_data`` returns the report whatever it says;
``load_data`` refuses (``InputError``) when the report says the data cannot be used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ..errors import InputError
from .report import (
    SPLITS,
    DataPolicy,
    DataReport,
    assess,
    conversions,
    count_by_class,
    skipped_dicts,
)
from .scanning import ScannedFile, ScanOptions, ScanResult, SkippedFile, verify_files
from .sources import RawSource, resolve_source
from .splits import remove_leaks, split_record, stratified_split

IMAGE_MODES = ("RGB", "L")


@dataclass(frozen=True)
class Example:
    """One usable image: where it is, its class index, and its content hash.

    ``digest`` (sha1 of the file's bytes) identifies the content: feature caches key
    on it and duplicate detection compares it.
    """

    path: str
    label: int
    digest: str


@dataclass
class DatasetSplits:
    """Usable examples by split, with the report that explains them.

    Attributes:
        classes: class names; ``Example.label`` indexes this list.
        train, val, test: the examples; ``test`` is empty without a test split.
        report: the full data report (also for the run directory).
        split: how ``val`` was made: {"source": "folder"|"csv"|"stratified"|"none",
            "seed", "fraction", "n_val", "val_fingerprint", ...}.
    """

    classes: list[str]
    train: list[Example]
    val: list[Example]
    test: list[Example]
    report: DataReport
    split: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_data(
    source,
    *,
    val_split: float = 0.2,
    seed: int = 0,
    image_mode: str = "RGB",
    scan: ScanOptions | None = None,
    policy: DataPolicy | None = None,
) -> DatasetSplits:
    """Load a dataset for training, or refuse with the reason.

    Args:
        source: a folder (class sub-folders, or ``train/`` [``val/``] [``test/``]), a
            ``.csv`` of ``path,label[,split]``, or ``(images, labels[, classes])``
            with images a uint8 array (N,H,W[,C]) or a list of PIL images.
        val_split: fraction of each class held out for validation when the source
            has no validation split (0 for none).
        seed: makes the held-out set reproducible.
        image_mode: "RGB" or "L", the mode images are converted to on load.
        scan: how files are judged (pixel limit, cache); defaults are sensible.
        policy: thresholds for warnings about class sizes and imbalance.

    Returns:
        DatasetSplits with the examples, the report and the split record.

    Raises:
        InputError: when the data cannot be trained on; the message is the report's
            one-line reason and the full report is attached as ``.report``.

    Example:
        >>> data = load_data("photos/", val_split=0.2, seed=0)  # doctest: +SKIP
        >>> data.classes, len(data.train), data.report.warnings  # doctest: +SKIP
    """
    splits = _build(
        source, val_split=val_split, seed=seed, image_mode=image_mode, scan=scan, policy=policy
    )
    if not splits.report.usable:
        exc = InputError(splits.report.reason)
        exc.report = splits.report
        raise exc
    return splits


def check_data(
    source,
    *,
    val_split: float = 0.2,
    seed: int = 0,
    image_mode: str = "RGB",
    scan: ScanOptions | None = None,
    policy: DataPolicy | None = None,
) -> DataReport:
    """The report ``load_data`` would act on, without refusing (for ``data check``).

    Bad data never raises; it makes ``report.usable`` False with ``report.reason``.
    Only invalid options (``val_split`` outside [0, 1), unknown ``image_mode``) raise
    ``InputError``.

    It only verifies: JPEGs are decoded at the smallest scale, and no working copies
    are made (``scan.copy_side`` is ignored; ``load_data`` makes them).
    """
    scan = replace(scan or ScanOptions(), copy_side=None)
    return _build(
        source, val_split=val_split, seed=seed, image_mode=image_mode, scan=scan, policy=policy
    ).report


def _build(
    source,
    *,
    val_split: float,
    seed: int,
    image_mode: str,
    scan: ScanOptions | None,
    policy: DataPolicy | None,
) -> DatasetSplits:
    _check_options(val_split, image_mode)
    try:
        src = resolve_source(source)
    except InputError as exc:
        report = DataReport(
            source=_describe_source(source), errors=[str(exc)], image_mode=image_mode
        )
        return DatasetSplits([], [], [], [], report, {})
    result = verify_files(src.candidates, root=src.root, options=scan or ScanOptions())
    files, leaks = remove_leaks(result.files)
    by_split, record = _split(src, files, val_split, seed)
    report = _report(
        src, result, by_split, record, leaks=leaks, image_mode=image_mode, policy=policy
    )
    index = {c: i for i, c in enumerate(src.classes)}
    examples = {s: [_example(f, index) for f in by_split[s]] for s in SPLITS}
    return DatasetSplits(
        list(src.classes), examples["train"], examples["val"], examples["test"], report, record
    )


def _report(
    src: RawSource,
    result: ScanResult,
    by_split: dict[str, list[ScannedFile]],
    record: dict,
    *,
    leaks: list[SkippedFile],
    image_mode: str,
    policy: DataPolicy | None,
) -> DataReport:
    """Judge the files kept in each split, and put everything into the data report."""
    kept = [f for split in SPLITS for f in by_split[split]]
    counts = count_by_class(kept, src.classes)
    errors, warnings = assess(
        src.classes,
        counts,
        candidates=src.candidates,
        files=kept,
        splits_present=src.splits | ({"val"} if by_split["val"] else set()),
        policy=policy or DataPolicy(),
    )
    errors = src.errors + errors
    if not src.classes and not errors:
        errors.append("no classes found")
    skipped = src.skipped + result.skipped + leaks
    if skipped:
        warnings.insert(0, f"{len(skipped)} file(s) or folder(s) not used; each is listed")
    return DataReport(
        source={"kind": src.kind, "path": src.root},
        classes=list(src.classes),
        counts=counts,
        skipped=skipped_dicts(skipped),
        warnings=warnings,
        errors=errors,
        image_mode=image_mode,
        conversions=conversions(kept, image_mode),
        split=record,
        scanned=len(src.candidates),
        metadata=src.metadata,
        cache={"hits": result.cache_hits, "misses": result.cache_misses, "path": result.cache_path},
    )


def _split(
    src: RawSource, files: list[ScannedFile], val_split: float, seed: int
) -> tuple[dict[str, list[ScannedFile]], dict]:
    """Files by split, validation held out from train unless the source has its own."""
    by_split = {s: [f for f in files if f.candidate.split == s] for s in SPLITS}
    if "val" in src.splits:
        source = "csv" if src.kind == "csv" else "folder"
        return by_split, split_record(source, fraction=None, seed=None, val=by_split["val"])
    if val_split <= 0:
        return by_split, split_record("none", fraction=0.0, seed=seed, val=[])
    train, val = stratified_split(by_split["train"], val_split, seed)
    by_split["train"] = train
    by_split["val"] = [
        ScannedFile(replace(f.candidate, split="val"), f.digest, f.probe) for f in val
    ]
    return by_split, split_record("stratified", fraction=val_split, seed=seed, val=val)


def _check_options(val_split: float, image_mode: str) -> None:
    if not isinstance(val_split, (int, float)) or not 0 <= val_split < 1:
        raise InputError(f"val_split must be a fraction in [0, 1), got {val_split!r}")
    if image_mode not in IMAGE_MODES:
        raise InputError(f"image_mode must be one of {', '.join(IMAGE_MODES)}, got {image_mode!r}")


def _example(f: ScannedFile, index: dict[str, int]) -> Example:
    return Example(path=f.candidate.path, label=index[f.candidate.label], digest=f.digest)


def _describe_source(source) -> dict:
    if isinstance(source, (str, os.PathLike)):
        return {"kind": "path", "path": os.fspath(source)}
    return {"kind": type(source).__name__, "path": None}
