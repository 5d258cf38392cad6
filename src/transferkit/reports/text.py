"""Plain-text and CSV renderers for the terminal: evaluation metrics and predictions.

Why here and not in the metric or predict code: those return dataclasses; turning them
into a table, JSON or CSV is a separate job, and the CLI handlers stay one call each.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .metrics import Metrics

if TYPE_CHECKING:  # imported for type hints only: predict imports the data layer
    from ..evaluation import Evaluation
    from ..predict import Failure, PredictResult

PREDICT_FORMATS = ("table", "json", "csv")
SET_SEPARATOR = "|"  # between a prediction set's classes in the CSV
MAX_CONFUSION_CLASSES = 20  # wider matrices do not fit a terminal; JSON has them all


def format_evaluation(ev: Evaluation) -> str:
    """The evaluation as a few aligned blocks: overall, per class, confusion matrix."""
    what = "the test split" if ev.split == "test" else "all usable images"
    head = f"{ev.model} on {what} of {ev.data}: {ev.metrics.n:,} images"
    if ev.skipped:
        head += f" ({len(ev.skipped):,} file(s) skipped; --json lists them with the reason)"
    return "\n\n".join([head, format_metrics(ev.metrics)])


def format_metrics(m: Metrics) -> str:
    """Overall numbers, the per-class table and (for up to 20 classes) the confusion matrix."""
    overall = [
        ("accuracy", f"{m.accuracy:.4f}"),
        ("balanced accuracy", f"{m.balanced_accuracy:.4f}"),
    ]
    overall += [(f"top-{k} accuracy", f"{v:.4f}") for k, v in sorted(m.top_k_accuracy.items())]
    overall += [("macro F1", f"{m.macro_f1:.4f}"), ("calibration error (ECE)", f"{m.ece:.4f}")]
    width = max(len(k) for k, _ in overall)
    blocks = ["\n".join(f"{k:<{width}}  {v}" for k, v in overall)]
    rows = [
        [c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support)]
        for c in m.per_class
    ]
    blocks.append(_table(["class", "precision", "recall", "F1", "support"], rows, numeric=1))
    if len(m.classes) <= MAX_CONFUSION_CLASSES:
        cm = [[m.classes[i], *map(str, row)] for i, row in enumerate(m.confusion)]
        cols = ["true \\ predicted", *(str(i) for i in range(len(m.classes)))]
        legend = "  ".join(f"{i}={c}" for i, c in enumerate(m.classes))
        blocks.append(f"confusion matrix (columns: {legend})\n" + _table(cols, cm, numeric=1))
    else:
        blocks.append(f"confusion matrix: {len(m.classes)} classes; see --json or report.html")
    return "\n\n".join(blocks)


def format_predictions(result: PredictResult, fmt: str = "table") -> str:
    """Predictions as an aligned table, JSON (failures included) or CSV.

    CSV and table hold the predictions only, one row per image: the path, the label
    (the CSV only: the table's prediction column says it), its calibrated confidence,
    ``unknown``, ``ood_score``, the prediction set, then the other top-k classes and
    probabilities; failures go to :func:`format_failures` so a CSV consumer gets clean
    rows. CSV writes a prediction set as its classes joined by ``|`` and an absent
    value as an empty cell; the table writes a set as ``coat or pullover`` and an
    absent value as ``-``.
    """
    if fmt not in PREDICT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if fmt == "json":
        return json.dumps(result.to_dict(), indent=2, ensure_ascii=False)
    csv_out = fmt == "csv"
    k = max((len(p.top_k) for p in result.predictions), default=1)
    header = ["path", "label", "prediction", "confidence", "unknown", "ood_score"]
    header.append("prediction_set")
    for rank in range(2, k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    rows = [_prediction_row(p, csv_out) for p in result.predictions]
    if csv_out:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    return _table([h for h in header if h != "label"], [[r[0], *r[2:]] for r in rows])


def _prediction_row(p, csv_out: bool) -> list[str]:
    digits = 6 if csv_out else 4
    missing = "" if csv_out else "-"
    if p.unknown is None:
        unknown = missing
    else:
        unknown = ("true" if p.unknown else "false") if csv_out else ("yes" if p.unknown else "no")
    score = missing if p.ood_score is None else f"{p.ood_score:.{digits}g}"
    if p.prediction_set is None:
        members = missing
    else:
        members = (SET_SEPARATOR if csv_out else " or ").join(p.prediction_set)
    row = [p.path, p.label, p.label, f"{p.confidence:.{digits}f}", unknown, score, members]
    for name, prob in p.top_k[1:]:
        row += [name, f"{prob:.{digits}f}"]
    return row


def format_failures(failures: Sequence[Failure]) -> str:
    """One line per input that could not be predicted: ``path: reason``."""
    return "\n".join(f"{f.path}: {f.reason}" for f in failures)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: int = 99) -> str:
    """Columns aligned with two spaces; columns from ``numeric`` on are right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        parts = [
            f"{c:>{w}}" if i >= numeric else f"{c:<{w}}"
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
