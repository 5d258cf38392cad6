"""Sources: turn what the user pointed at into labelled candidate files.

Four kinds: a folder of class sub-folders; a folder holding ``train/`` (and
optionally ``val/``, ``test/``) each of class sub-folders; a CSV of ``path,label``
(optionally ``split``); and in-memory arrays (``arrays.py``). Nothing here decodes
an image; that is the scanner's job.
"""

from __future__ import annotations

import csv
import json
import os

from ..errors import InputError
from .arrays import resolve_arrays
from .images import special_file
from .raw import RawSource
from .scanning import (
    Candidate,
    SkippedFile,
    _dir_key,
    _Walk,
    display_path,
    litter_reason,
    walk_class_folder,
)

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
# Written by `transferkit datasets`; recognised at a dataset root instead of reported.
METADATA_FILE = "transferkit-dataset.json"


def resolve_source(source) -> RawSource:
    """Dispatch on what ``source`` is. Raises ``InputError`` when it is none of them."""
    if isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        if not os.path.exists(path):
            raise InputError(f"data not found: {os.fspath(source)!r} does not exist")
        if os.path.isdir(path):
            return resolve_folder(path)
        special = special_file(path)
        if special is not None:  # a named pipe would block the read forever
            raise InputError(f"data {os.fspath(source)!r} is {special}, not a file")
        if path.lower().endswith(".csv"):
            return resolve_csv(path)
        raise InputError(
            f"{os.fspath(source)!r} is a file, not a folder of class folders "
            "or a .csv of path,label"
        )
    if isinstance(source, (tuple, list)) and len(source) in (2, 3):
        return resolve_arrays(*source)
    raise InputError(
        f"unsupported data source {type(source).__name__}: expected a folder, "
        "a .csv file of path,label, or a tuple (images, labels[, classes])"
    )


# ------------------------------------------------------------------------- folders


def resolve_folder(root: str) -> RawSource:
    """A folder of class folders, or of ``train/`` [``val/``] [``test/``] split folders."""
    src = RawSource(kind="folder", root=root, classes=[])
    dirs, files = _list_level(root, src)
    _skip_loose(root, files, src)
    split_dirs = {SPLIT_ALIASES[n.lower()]: n for n in dirs if n.lower() in SPLIT_ALIASES}
    if "train" in split_dirs:
        _resolve_split_folders(src, dirs, split_dirs)
    else:
        _resolve_class_folders(src, dirs, files)
    return src


def _resolve_class_folders(src: RawSource, dirs: list[str], files: list[str]) -> None:
    """The root's sub-folders are the classes; every image is for training."""
    _collect(src.root, dirs, "train", src)
    src.classes = sorted(dirs)
    if not dirs:
        images = sum(1 for f in files if litter_reason(f) is None)
        src.errors.append(
            f"no class folders in {src.root}: expected one sub-folder per class"
            + (f" (found {images} files directly inside)" if images else "")
        )


def _resolve_split_folders(src: RawSource, dirs: list[str], split_dirs: dict[str, str]) -> None:
    """``train/`` names the classes; ``val/`` and ``test/`` may only use those classes."""
    src.kind = "split-folders"
    for name in dirs:
        if name.lower() not in SPLIT_ALIASES:
            src.skipped.append(
                SkippedFile(
                    name,
                    "unexpected folder next to train/ (expected val/ or test/); not used",
                    "outside_class",
                )
            )
    src.errors += _ambiguous_splits(dirs)
    for split in ("train", "val", "test"):
        if split in split_dirs:
            _resolve_split(src, split, split_dirs[split])
    if not src.classes:
        src.errors.append(f"no class folders in {os.path.join(src.root, split_dirs['train'])}")


def _ambiguous_splits(dirs: list[str]) -> list[str]:
    """Errors for a split spelled twice (``val/`` and ``validation/``, say)."""
    aliases = [n for n in dirs if n.lower() in SPLIT_ALIASES]
    errors = []
    for split in ("train", "val", "test"):
        names = [n for n in aliases if SPLIT_ALIASES[n.lower()] == split]
        if len(names) > 1:
            errors.append(f"ambiguous {split} split: both {names[0]}/ and {names[1]}/ exist")
    return errors


def _resolve_split(src: RawSource, split: str, name: str) -> None:
    """Collect one split folder ``name`` of class folders."""
    folder = os.path.join(src.root, name)
    class_dirs, loose = _list_level(folder, src)
    _skip_loose(folder, loose, src)
    if split == "train":
        src.classes = sorted(class_dirs)
    else:
        src.splits.add(split)
        class_dirs = _train_classes_only(src, name, class_dirs)
    _collect(folder, class_dirs, split, src)


def _train_classes_only(src: RawSource, name: str, class_dirs: list[str]) -> list[str]:
    """The class folders of split folder ``name`` that train/ has too; others are an error."""
    extra = sorted(set(class_dirs) - set(src.classes))
    if not extra:
        return class_dirs
    src.errors.append(f"{name}/ has class folders that train/ lacks: " + ", ".join(extra))
    return [d for d in class_dirs if d in src.classes]


def _list_level(folder: str, src: RawSource) -> tuple[list[str], list[str]]:
    """(sub-folder names, file names) of one level, with litter set aside."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot list {folder}: {exc.strerror or exc}") from None
    dirs, files = [], []
    walk = _Walk(src.root, src.skipped)
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        if e.name == METADATA_FILE and folder == src.root:
            src.metadata = _read_metadata(e.path)
            continue
        reason = litter_reason(e.name, is_dir)
        if reason:
            walk.skip(e.path, reason, "hidden")
        elif is_dir and _dir_key(e.path) in (_dir_key(folder), _dir_key(src.root)):
            walk.skip(e.path, "symlink loop: leads back to a folder above it", "symlink")
        elif is_dir:
            dirs.append(e.name)
        else:
            files.append(e.name)
    return dirs, files


def _skip_loose(folder: str, files: list[str], src: RawSource) -> None:
    for name in files:
        path = os.path.join(folder, name)
        src.skipped.append(
            SkippedFile(
                display_path(path, src.root), "not inside a class folder; not used", "outside_class"
            )
        )


def _collect(folder: str, class_dirs: list[str], split: str, src: RawSource) -> None:
    above = frozenset(k for k in (_dir_key(src.root), _dir_key(folder)) if k is not None)
    seen: set = set()
    for name in class_dirs:
        src.candidates += walk_class_folder(
            os.path.join(folder, name),
            label=name,
            split=split,
            root=src.root,
            skipped=src.skipped,
            seen=seen,
            ancestors=above,
        )


def _read_metadata(path: str) -> dict | None:
    if special_file(path) is not None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------- CSV


def resolve_csv(path: str) -> RawSource:
    """A CSV of ``path,label`` rows (header optional; optional third column ``split``).

    Relative paths are relative to the CSV's folder. Bad rows are reported, not fatal.
    """
    src = RawSource(kind="csv", root=os.path.dirname(path), classes=[])
    name = os.path.basename(path)
    _add_csv_rows(src, _read_csv(path), name)
    train_labels = {c.label for c in src.candidates if c.split == "train"}
    src.classes = sorted(train_labels)
    extra = sorted({c.label for c in src.candidates} - train_labels)
    if extra:
        src.errors.append(f"{name} has val/test labels with no train rows: {', '.join(extra)}")
    if not src.candidates:
        src.errors.append(f"{name} lists no usable rows of path,label")
    return src


def _read_csv(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.reader(f))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; save the CSV as UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def _add_csv_rows(src: RawSource, rows: list[list[str]], name: str) -> None:
    """Each row of CSV file ``name`` becomes a candidate, or a skipped entry with its reason.

    A file listed twice keeps its first row.
    """
    cols, start = _csv_columns(rows)
    first_line: dict[str, int] = {}
    for lineno, row in enumerate(rows[start:], start=start + 1):
        where = f"{name}:{lineno}"
        entry = _csv_row(row, cols, src.root, where)
        if isinstance(entry, Candidate) and entry.path in first_line:
            entry = SkippedFile(
                where,
                f"{entry.rel} is listed twice (first on line "
                f"{first_line[entry.path]}); the first row is used",
                "duplicate_entry",
            )
        if isinstance(entry, SkippedFile):
            src.skipped.append(entry)
        elif entry is not None:
            first_line[entry.path] = lineno
            src.candidates.append(entry)
            src.splits.add(entry.split)


def _csv_row(
    row: list[str], cols: dict[str, int | None], root: str, where: str
) -> Candidate | SkippedFile | None:
    """One row as a candidate, or why it cannot be one; ``None`` for a blank row."""
    if not row or all(not c.strip() for c in row):
        return None
    cells = [c.strip() for c in row]
    if (
        len(cells) <= max(cols["path"], cols["label"])
        or not cells[cols["path"]]
        or not cells[cols["label"]]
    ):
        return SkippedFile(where, f"bad row {row!r}: expected path,label", "bad_row")
    split = "train"
    if cols.get("split") is not None and len(cells) > cols["split"] and cells[cols["split"]]:
        split = SPLIT_ALIASES.get(cells[cols["split"]].lower(), "")
        if not split:
            return SkippedFile(
                where,
                f"unknown split {cells[cols['split']]!r} (expected train, val or test)",
                "bad_row",
            )
    rel, label = cells[cols["path"]], cells[cols["label"]]
    full = os.path.normpath(os.path.join(root, os.path.expanduser(rel)))
    return Candidate(full, rel, label, split)


def _csv_columns(rows: list[list[str]]) -> tuple[dict[str, int | None], int]:
    """Column positions and the index of the first data row (after a header, if any)."""
    if rows:
        head = [c.strip().lower() for c in rows[0]]
        if "path" in head and "label" in head:
            return {
                "path": head.index("path"),
                "label": head.index("label"),
                "split": head.index("split") if "split" in head else None,
            }, 1
    return {"path": 0, "label": 1, "split": 2}, 0
