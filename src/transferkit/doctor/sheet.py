"""The relabelling sheet: every image of the data as a CSV the CSV data source reads
(``path,label,split``), with the doctor's ``suggested`` label and its ``reason``
beside the label it has now. The user edits ``label`` where they agree and fits from
the sheet; nothing in the data folder is moved or changed."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import InputError

COLUMNS = ("path", "label", "split", "suggested", "reason")


def write_relabel_csv(report, path: str | os.PathLike) -> Path:
    """Write ``report``'s sheet to ``path`` (a new file: an edited sheet is never
    overwritten); paths in it are relative to its folder. Returns the path."""
    out = check_sheet_path(path)
    atomic_write_text(out, sheet_text(report, out.parent))
    return out


def check_sheet_path(path: str | os.PathLike) -> Path:
    """``path`` as a new sheet's path, or a one-line refusal (checked before the
    doctor spends its time, and again when writing)."""
    out = Path(path)
    if out.exists():
        raise InputError(
            f"--write-csv {str(out)!r} already exists; choose a new file name "
            "(an edited sheet is never overwritten)"
        )
    if not out.parent.is_dir():
        raise InputError(f"--write-csv {str(out)!r}: folder {str(out.parent)!r} does not exist")
    return out


def sheet_text(report, folder: Path) -> str:
    reasons = _reasons(report)
    suggested = {m["path"]: m["suggested"] for m in report.suspected_mislabels}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    base = os.path.abspath(folder)
    for it in report.items:
        writer.writerow(
            [
                os.path.relpath(os.path.abspath(it.path), base),
                report.classes[it.label],
                it.source_split,
                suggested.get(it.rel, ""),
                "; ".join(reasons.get(it.rel, [])),
            ]
        )
    return buf.getvalue()


def _reasons(report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in report.suspected_mislabels:
        out.setdefault(m["path"], []).append(
            f"suspected mislabel: looks like {m['suggested']} (score {m['score']:.2f})"
        )
    for g in report.duplicate_groups:
        what = ("leak: " if g["leak"] else "") + f"{g['kind']} duplicate"
        for p in g["paths"]:
            others = ", ".join(q for q in g["paths"] if q != p)
            out.setdefault(p, []).append(f"{what} of {others}")
    for o in report.outliers:
        out.setdefault(o["path"], []).append(
            f"outlier: far from every class, nearest {o['nearest_class']} (score {o['score']:.1f})"
        )
    return out
