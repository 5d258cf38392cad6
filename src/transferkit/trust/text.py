"""``predict``'s CSV and table with the trust fields: per image the label, its
calibrated confidence, ``unknown``, ``ood_score`` and the prediction set, then the
other top-k classes (JSON is ``PredictResult.to_dict``).

CSV writes a prediction set as its classes joined by ``|`` and an absent value as
an empty cell; the table writes a set as ``coat or pullover`` and an absent value as
``-``.
"""

from __future__ import annotations

import csv
import io

SET_SEPARATOR = "|"


def format_trust_predictions(result, fmt: str) -> str:
    """``result`` (a ``PredictResult``) as ``csv`` or ``table``."""
    csv_out = fmt == "csv"
    k = max((len(p.top_k) for p in result.predictions), default=1)
    header = ["path", "label", "prediction", "confidence", "unknown", "ood_score"]
    header.append("prediction_set")
    for rank in range(2, k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    rows = [_row(p, csv_out) for p in result.predictions]
    if csv_out:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return buf.getvalue().rstrip("\n")
    table_header = [h for h in header if h != "label"]
    return _table(table_header, [[r[0], *r[2:]] for r in rows])


def _row(p, csv_out: bool) -> list[str]:
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


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])
