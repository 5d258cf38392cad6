"""``report.html`` of a run, built only from the files in the run directory.

Why only from files: the report must be rebuildable at any time (``transferkit report
RUN``, after an upgrade, on another machine) without the model, the GPU or the training
process. Everything it shows is already recorded: ``config.json`` (configuration),
``metrics.json`` (phases, timings, the strategy decision), ``history.csv`` (curves of
both phases; the unfreeze point is the first fine-tune epoch), ``data_report.json`` and
``predictions.csv`` (per-example probabilities, from which the evaluation metrics, the
confusion matrix and the most confident mistakes are computed; the test split when the
run had one, else validation). Mistake thumbnails are opened from the recorded image
paths when those files still exist, and shown as "unavailable" otherwise.

Example:
    >>> write_run_report("runs/cats")  # doctest: +SKIP
    PosixPath('runs/cats/report.html')
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data import open_image
from ..errors import InputError
from ..run_files import (
    CONFIG,
    DATA_REPORT,
    DOCTOR,
    HISTORY,
    METRICS,
    PREDICTIONS,
    TRUST,
    read_history,
)
from ..run_files import read_predictions as _read_prediction_rows
from .history import FINE_TUNE_PHASE, phase_of
from .html import write_report
from .metrics import Metrics, compute_metrics, most_confident_mistakes
from .trust_section import trust_section, uncertain_rows

REPORT = "report.html"
PLOTS = "plots"
MAX_MISTAKES = 16
MAX_CELL_IMAGES = 12  # per wrong confusion cell
MAX_DOCTOR_ROWS = 24  # suspects and outliers shown; leak groups shown


def write_run_report(
    run_dir: str | os.PathLike, *, max_mistakes: int = MAX_MISTAKES, plots: bool = True
) -> Path:
    """Write (or rebuild) ``RUN/report.html``; return its path.

    Args:
        run_dir: a run directory written by ``fit``.
        max_mistakes: how many of the most confident mistakes to show.
        plots: also write each plot as a PNG into ``RUN/plots/``.

    Raises:
        InputError: ``run_dir`` is not a run, or one of its files cannot be read.
    """
    run = Path(run_dir)
    content = run_report_content(run, max_mistakes=max_mistakes)
    return write_report(run / REPORT, png_dir=run / PLOTS if plots else None, **content)


def run_report_content(run_dir: str | os.PathLike, *, max_mistakes: int = MAX_MISTAKES) -> dict:
    """The keyword arguments of ``render_report`` for a run directory."""
    run = Path(run_dir)
    config = _read_json(run / CONFIG, required=True)
    metrics_json = _read_json(run / METRICS) or {}
    history = read_history(run) if (run / HISTORY).is_file() else []
    classes = [str(c) for c in config.get("classes", [])]
    every = _prediction_rows(run)
    split, rows = _evaluation_rows(every)
    metrics, mistakes = _metrics_and_mistakes(rows, classes, max_mistakes) if rows else (None, None)
    doctor = _read_json(run / DOCTOR)
    return {
        "title": _title(run, metrics_json, split, metrics),
        "metrics": metrics,
        "history": history,
        "data_report": _read_json(run / DATA_REPORT),
        "decision": _decision(metrics_json, config),
        "config": config,
        "mistakes": mistakes,
        "unfreeze_epoch": unfreeze_epoch(history),
        "record": metrics_json or None,
        "reliability": _reliability(rows, classes, split, metrics_json),
        "cells": _cells(rows, classes) if metrics is not None else None,
        "doctor": _doctor(doctor) if doctor is not None else None,
        "trust_html": (
            _trust_html(run, every, classes, metrics_json, reliability=False)
            if metrics is not None
            else None
        ),
    }


def run_trust_section(run_dir: str | os.PathLike, reliability: bool = True) -> str:
    """The report's "How far to trust it" part of a run directory on its own (its
    trust.json, predictions.csv, metrics.json, and the least certain validation
    images, opened where they still are); ``reliability=False`` leaves out the
    reliability diagram (the report shows it with the calibration numbers)."""
    run = Path(run_dir)
    config = _read_json(run / CONFIG, required=True)
    classes = [str(c) for c in config.get("classes", [])]
    metrics_json = _read_json(run / METRICS) or {}
    return _trust_html(run, _prediction_rows(run), classes, metrics_json, reliability)


def _trust_html(run: Path, rows: list[dict], classes, metrics_json: dict, reliability: bool):
    """``trust_section`` of the evaluated split's rows (test, else validation) and the
    least certain validation images; ``rows``: every row of predictions.csv."""
    from ..trust.state import trust_from_json

    index = {c: i for i, c in enumerate(classes)}
    rows = [r for r in rows if r.get("label") in index]
    split, chosen = _evaluation_rows(rows)
    probs = np.array([r["probs"] for r in chosen], dtype=float).reshape(len(chosen), len(classes))
    labels = np.array([index[r["label"]] for r in chosen], dtype=np.int64)
    trust = _read_json(run / TRUST)
    uncertain = []
    if trust is not None:
        uncertain = uncertain_rows(rows, classes, trust_from_json(trust).quantile)
        for u in uncertain:
            u["image"] = _image_or_none(u.get("path"))
    temperature = float(metrics_json.get("temperature", 1.0))
    return trust_section(trust, probs, labels, temperature, uncertain, split or "val", reliability)


def _cells(rows: list[dict], classes: list[str]) -> list[dict]:
    """Per wrong confusion cell (true i, predicted j): its count and up to
    ``MAX_CELL_IMAGES`` of its images, the most confident first."""
    index = {c: i for i, c in enumerate(classes)}
    found: dict[tuple[int, int], list] = {}
    for r in rows:
        if r.get("label") not in index:
            continue
        probs = np.asarray(r["probs"], dtype=float)
        i, j = index[r["label"]], int(probs.argmax())
        if i != j:
            found.setdefault((i, j), []).append((float(probs[j]), r.get("path")))
    cells = []
    for (i, j), hits in sorted(found.items()):
        hits.sort(key=lambda h: -h[0])
        images = [
            {"image": _image_or_none(path), "confidence": conf, "path": path}
            for conf, path in hits[:MAX_CELL_IMAGES]
        ]
        cells.append(
            {
                "i": i,
                "j": j,
                "true": classes[i],
                "pred": classes[j],
                "count": len(hits),
                "images": images,
            }
        )
    return cells


def _doctor(record: dict) -> dict:
    """doctor.json with each shown row's image (paths are relative to its data root)."""
    root = str(record.get("data") or "")

    def shown(row: dict) -> dict:
        return {**row, "image": _image_or_none(os.path.join(root, str(row.get("path"))))}

    suspects = list(record.get("suspected_mislabels") or [])
    leaks = [
        {
            "kind": g.get("kind"),
            "members": [
                shown({"path": p, "split": sp})
                for p, sp in zip(g.get("paths", []), g.get("splits", []), strict=False)
            ],
        }
        for g in (record.get("leaks") or [])[:MAX_DOCTOR_ROWS]
    ]
    return {
        "source": record.get("source"),
        "suspects": [shown(r) for r in suspects[:MAX_DOCTOR_ROWS]],
        "n_suspects": len(suspects),
        "leaks": leaks,
        "outliers": [shown(r) for r in (record.get("outliers") or [])[:MAX_DOCTOR_ROWS]],
    }


def _reliability(rows, classes, split, metrics_json: dict) -> dict | None:
    """The evaluated images' calibrated probabilities and what calibration did, for
    the Calibration section; None for a run from before calibration existed."""
    if "temperature" not in metrics_json or not rows:
        return None
    index = {c: i for i, c in enumerate(classes)}
    rows = [r for r in rows if r.get("label") in index]
    return {
        "probabilities": np.array([r["probs"] for r in rows], dtype=float),
        "labels": np.array([index[r["label"]] for r in rows], dtype=np.int64),
        "temperature": float(metrics_json["temperature"]),
        "split": split,
        "ece": metrics_json.get("ece"),
        "ece_uncalibrated": metrics_json.get("ece_uncalibrated"),
        "reason": metrics_json.get("calibration_reason"),
    }


def unfreeze_epoch(history: list[dict]) -> int | None:
    """The first epoch of the fine-tuning phase (when the base was unfrozen), or None."""
    for row in history:
        if phase_of(row) == FINE_TUNE_PHASE and row.get("epoch") is not None:
            return int(row["epoch"])
    return None


def _prediction_rows(run: Path) -> list[dict]:
    """Every row of the run's predictions.csv (none when it has none)."""
    try:
        return _read_prediction_rows(run)
    except (ValueError, KeyError) as exc:
        raise InputError(f"{str(run / PREDICTIONS)!r} cannot be read: {exc}") from None


def _evaluation_rows(rows: list[dict]) -> tuple[str | None, list[dict]]:
    """The prediction rows to evaluate: the test split if the run had one, else val."""
    for split in ("test", "val"):
        chosen = [r for r in rows if r.get("split") == split]
        if chosen:
            return split, chosen
    return None, []


def _metrics_and_mistakes(
    rows: list[dict], classes: list[str], k: int
) -> tuple[Metrics, list[dict]]:
    index = {c: i for i, c in enumerate(classes)}
    rows = [r for r in rows if r.get("label") in index]
    if not rows:
        return None, None
    probs = np.array([r["probs"] for r in rows], dtype=float)
    labels = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    try:
        metrics = compute_metrics(probs, labels, classes)
    except InputError as exc:
        raise InputError(f"{PREDICTIONS} of this run is not usable: {exc}") from None
    mistakes = []
    for i in most_confident_mistakes(probs, labels, k=k):
        row = rows[i]
        pred = int(probs[i].argmax())
        mistakes.append(
            {
                "image": _image_or_none(row.get("path")),
                "true": row["label"],
                "pred": classes[pred],
                "confidence": float(probs[i, pred]),
                "path": row.get("path"),
            }
        )
    return metrics, mistakes


def _image_or_none(path: str | None):
    """The image at ``path``, or None when it has moved or cannot be read.

    Why not fail: a report rebuilt on another machine, or after the data was tidied,
    should still show everything else; the grid says "image unavailable".
    """
    from .plots import THUMBNAIL_PX

    if not path or not os.path.isfile(path):
        return None
    try:
        return open_image(path, channels=3, side=THUMBNAIL_PX)  # not a 12 MP decode
    except InputError:
        return None


def _decision(metrics_json: dict, config: dict) -> dict | None:
    """The recorded strategy decision; for a strategy set by hand, say so."""
    decision = metrics_json.get("decision")
    if isinstance(decision, dict):
        return {k: _as_rows(v) for k, v in decision.items()}
    strategy = metrics_json.get("strategy") or config.get("fit", {}).get("strategy")
    if strategy is None:
        return None
    return {
        "strategy": strategy,
        "reason": f"set in the fit configuration (strategy={strategy}); no measurement "
        "of the data was needed to choose it",
    }


def _as_rows(value):
    """``{layer: {score: number}}`` as one table row per layer, numbers only.

    Why: per-layer transferability scores read as a table (layers down, scores across);
    nested key/value boxes, one per layer, hide the comparison the decision rests on.
    """
    if not isinstance(value, dict) or not value:
        return value
    if not all(isinstance(v, dict) for v in value.values()):
        return value
    return [
        {"layer": name, **{k: v for k, v in row.items() if not isinstance(v, dict | list)}}
        for name, row in value.items()
    ]


def _title(run: Path, metrics_json: dict, split: str | None, metrics: Metrics | None) -> str:
    name = run.resolve().name
    parts = [metrics_json.get(k) for k in ("backbone", "strategy") if metrics_json.get(k)]
    title = f"transferkit report: {name}" + (f" — {', '.join(map(str, parts))}" if parts else "")
    if split and metrics is not None:
        title += f" (evaluated on the {split} split, {metrics.n} images)"
    return title


def _read_json(path: Path, required: bool = False) -> dict | None:
    if not path.is_file():
        if required:
            raise InputError(
                f"{str(path.parent)!r} is not a transferkit run directory (no {path.name})"
            )
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{str(path)!r} cannot be read: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"{str(path)!r} does not hold a JSON object")
    return value
