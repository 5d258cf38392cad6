"""Run directories (DESIGN §3): everything needed to rebuild, judge and reuse a model.

``config.json`` (backbone spec, architecture and weights digest, cut, head, classes,
preprocessing, the resolved fit config, the SHA-256 of the weights file),
``model.safetensors``, ``metrics.json``, ``history.csv``, ``data_report.json``,
``train.log``, ``predictions.csv`` (validation/test probabilities). Every file is
written atomically; nothing needs pickle. Loading checks the weights file against its
recorded digest, so a truncated or altered file is refused instead of giving a wrong
model.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from . import __version__
from .atomic import atomic_write_text, file_sha256, save_tensors
from .backbones.base import Backbone, weights_digest
from .errors import InputError
from .heads import ClassifierHead, HeadConfig, TransferModel

CONFIG, WEIGHTS, METRICS, HISTORY = (
    "config.json",
    "model.safetensors",
    "metrics.json",
    "history.csv",
)
DATA_REPORT, LOG, PREDICTIONS = "data_report.json", "train.log", "predictions.csv"
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
]


def _json(obj) -> str:
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, default=str)


def backbone_record(backbone: Backbone) -> dict:
    """How to rebuild the backbone's architecture (weights come from the run)."""
    cfg = getattr(backbone.model, "pretrained_cfg", None) or {}
    record = backbone.describe()
    record["architecture"] = cfg.get("architecture")
    record["weights_digest"] = weights_digest(backbone.model)
    return record


def save_run(
    run_dir: str | Path,
    *,
    model: TransferModel,
    classes: list[str],
    fit_config: dict,
    metrics: dict,
    history: list[dict],
    data_report: dict | None = None,
    predictions: list[dict] | None = None,
) -> Path:
    """Write the run directory; returns its path."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_tensors(run / WEIGHTS, model.state_dict(), metadata={"format": "transferkit-run"})
    head = model.head
    config = {
        "transferkit_version": __version__,
        "classes": list(classes),
        "backbone": backbone_record(model.backbone),
        "head": {
            **head.config.to_dict(),
            "in_features": head.in_features,
            "num_classes": head.num_classes,
        },
        "preprocessing": {
            "data_config": model.backbone.describe()["data_config"],
            "image_size": fit_config.get("image_size"),
        },
        "fit": fit_config,
        "weights_sha256": file_sha256(run / WEIGHTS),
    }
    atomic_write_text(run / CONFIG, _json(config))
    atomic_write_text(run / METRICS, _json(metrics))
    atomic_write_text(run / HISTORY, history_csv(history))
    if data_report is not None:
        atomic_write_text(run / DATA_REPORT, _json(data_report))
    if predictions:
        atomic_write_text(run / PREDICTIONS, predictions_csv(predictions, classes))
    return run


def predictions_csv(rows: list[dict], classes: list[str]) -> str:
    """split, path, label, prediction, confidence, then one probability per class."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["split", "path", "label", "prediction", "confidence", *[f"p:{c}" for c in classes]]
    )
    for r in rows:
        probs = r["probs"]
        best = max(range(len(probs)), key=probs.__getitem__)
        writer.writerow(
            [
                r["split"],
                r["path"],
                classes[r["label"]],
                classes[best],
                f"{probs[best]:.6f}",
                *[f"{p:.6f}" for p in probs],
            ]
        )
    return buf.getvalue()


def read_predictions(run_dir: str | Path) -> list[dict]:
    """Rows of predictions.csv with probabilities as floats (empty if absent)."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
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


@dataclass
class LoadedRun:
    model: TransferModel
    config: dict
    classes: list[str]
    path: Path

    @property
    def metrics(self) -> dict:
        p = self.path / METRICS
        return json.loads(p.read_text()) if p.is_file() else {}


def _rebuild_backbone(record: dict, module: nn.Module | None) -> Backbone:
    from .backbones.builtin import BUILTIN, create_builtin_backbone
    from .backbones.checkpoint import create_module_backbone
    from .backbones.timm_loader import create_timm_backbone, is_timm_name

    if record.get("keras"):  # a Keras backbone: rebuilt by its loader
        from .backbones.keras_loader import rebuild_keras_backbone

        return rebuild_keras_backbone(record, module)
    cut = record.get("cut")
    if module is not None:
        return create_module_backbone(
            module, cut=cut, name=record.get("name"), data_config=record.get("data_config")
        )
    if record.get("spec") in BUILTIN:
        return create_builtin_backbone(record["spec"], pretrained=False, cut=cut)
    arch = record.get("architecture")
    if arch and is_timm_name(arch):
        return create_timm_backbone(arch, pretrained=False, cut=cut, spec=record.get("spec"))
    raise InputError(
        f"this run's backbone {record.get('name')!r} was a Python module; "
        "load it with load_run(path, backbone=<the same module architecture>)"
    )


def load_run(run_dir: str | Path, *, backbone: nn.Module | None = None) -> LoadedRun:
    """Rebuild the trained model of a run directory, refusing altered weights."""
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        raise InputError(f"{str(run)!r} is not a transferkit run directory (no {CONFIG})")
    try:
        config = json.loads((run / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{str(run / CONFIG)!r} is not valid JSON: {exc}") from None
    weights = run / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{str(weights)!r} is missing")
    if file_sha256(weights) != config.get("weights_sha256"):
        raise InputError(
            f"{str(weights)!r} does not match the digest in {CONFIG}: the file was truncated "
            "or altered; refusing to load a model that is not the one trained"
        )
    bb = _rebuild_backbone(config["backbone"], backbone)
    h = config["head"]
    head = ClassifierHead(
        h["in_features"], h["num_classes"], HeadConfig(h["pooling"], h["hidden"], h["dropout"])
    )
    model = TransferModel(bb, head)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:
        raise InputError(f"cannot load {str(weights)!r}: {str(exc).splitlines()[0]}") from None
    bb.weights_digest = config["backbone"]["weights_digest"]
    from .freezing import freeze

    freeze(model)
    model.eval()
    return LoadedRun(model, config, config["classes"], run)


def preprocessing_of(loaded: LoadedRun) -> tuple[dict, int | None]:
    p = loaded.config["preprocessing"]
    dc = dict(p["data_config"])
    dc["input_size"] = tuple(dc["input_size"])
    return dc, p.get("image_size")
