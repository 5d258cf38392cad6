"""The run directory's files and formats: their names, and the CSV and JSON that
``history.csv``, ``predictions.csv`` and the JSON records hold. Reading them needs
nothing else of transferkit, so the report builder and the run both use this
module."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

CONFIG, WEIGHTS, METRICS, HISTORY = (
    "config.json",
    "model.safetensors",
    "metrics.json",
    "history.csv",
)
DATA_REPORT, LOG, PREDICTIONS = "data_report.json", "train.log", "predictions.csv"
TRUST, TRUST_STATS = "trust.json", "trust.safetensors"  # OOD and conformal data
DOCTOR = "doctor.json"  # written by fit (leaks) and by `doctor --run` (every finding)
HISTORY_FIELDS = [
    "phase",
    "epoch",
    "phase_epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "input_seconds",
]


CHECKPOINT_DIR, FIT_CONFIG = "checkpoint", "fit_config.json"


def to_json(obj) -> str:
    """Indented JSON; NaN and infinities become null (valid JSON for any reader)."""

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, default=str)


# An undecodable byte of a file name written as text: "\\udc80" to "\\udcff".
_ESCAPED_BYTE = re.compile(r"\\udc[89a-f][0-9a-f]")


def path_text(name: str) -> str:
    """``name`` as text any UTF-8 reader takes.

    Why: a file name that is not valid UTF-8 (``b"caf\\xe9.png"`` on Linux) reaches
    Python with each undecodable byte as a lone surrogate, U+DC80 to U+DCFF
    (``"caf\\udce9.png"``), which UTF-8 cannot encode. Each such character is written
    as its escape, the six characters ``\\udce9``, as Python's ``repr`` and the run's
    JSON files show it; every other character is kept. :func:`text_path` reverses it.
    """
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def text_path(text: str) -> str:
    """The name :func:`path_text` wrote as ``text``, usable with ``open``.

    The one name this misreads is one that holds the escape literally: a backslash
    followed by ``udc80`` to ``udcff``."""
    return _ESCAPED_BYTE.sub(lambda m: chr(int(m.group()[2:], 16)), text)


def predictions_csv(rows: list[dict], classes: list[str]) -> str:
    """split, path, label, prediction, confidence, then one probability per class.

    Paths and class names go through :func:`path_text`, so the CSV is UTF-8 whatever
    the file names are; :func:`read_predictions` gives them back as they were."""
    names = [path_text(str(c)) for c in classes]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["split", "path", "label", "prediction", "confidence", *[f"p:{c}" for c in names]]
    )
    for r in rows:
        probs = r["probs"]
        best = max(range(len(probs)), key=probs.__getitem__)
        writer.writerow(
            [
                r["split"],
                path_text(str(r["path"])),
                names[r["label"]],
                names[best],
                f"{probs[best]:.6f}",
                *[f"{p:.6f}" for p in probs],
            ]
        )
    return buf.getvalue()


def read_predictions(run_dir: str | Path) -> list[dict]:
    """Rows of predictions.csv with probabilities as floats (empty if absent); paths
    and class names as they were before :func:`predictions_csv` escaped them."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("path", "label", "prediction"):
            if r.get(key) is not None:
                r[key] = text_path(r[key])
        r["confidence"] = float(r["confidence"])
        r["probs"] = [float(v) for k, v in r.items() if k.startswith("p:")]
    return rows


def history_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return buf.getvalue()


def read_history(run_dir: str | Path) -> list[dict]:
    rows = []
    with open(Path(run_dir) / HISTORY, newline="") as f:
        for row in csv.DictReader(f):
            rows.append(
                {
                    k: (v if k == "phase" else (float(v) if v not in ("", None) else None))
                    for k, v in row.items()
                }
            )
    return rows
