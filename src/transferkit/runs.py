"""Run directories: everything needed to rebuild, judge and reuse a model.

A :class:`Run` owns one directory: the training log while a fit runs, the
checkpoints a resume needs, the saved model and its records, the report.
``config.json`` (backbone spec, architecture and weights digest, cut, head, classes,
preprocessing, the resolved fit config, the SHA-256 of the weights file),
``model.safetensors``, ``metrics.json``, ``history.csv``, ``data_report.json``,
``train.log``, ``predictions.csv`` (validation/test probabilities), ``trust.json`` and
``trust.safetensors`` (the OOD statistics, the unknown threshold and the prediction
sets' quantile), ``doctor.json`` (train/test leaks; every finding after ``doctor
--run``). Every file is
written atomically; nothing needs pickle. Loading checks the weights file against its
recorded digest, so a truncated or altered file is refused instead of giving a wrong
model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from torch import nn

from ._version import __version__
from .atomic import atomic_write_text, file_sha256, fsync_dir, save_tensors
from .backbones import rebuild_backbone
from .backbones.base import Backbone, weights_digest
from .calibration import calibration_fields
from .errors import InputError
from .heads import ClassifierHead, HeadConfig, TransferModel
from .run_files import (  # re-exported: the names and formats of a run's files
    CHECKPOINT_DIR,
    CONFIG,
    DATA_REPORT,
    FIT_CONFIG,
    HISTORY,
    LOG,
    METRICS,
    PREDICTIONS,
    WEIGHTS,
    history_csv,
    predictions_csv,
    read_history,
    to_json,
)
from .trust.conformal import set_metrics
from .trust.state import NOT_RECORDED, TRUST, TRUST_STATS, load_trust, save_trust

log = logging.getLogger("transferkit")


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
    """Write the run directory; returns its path. ``config.json`` is written last, so
    a folder with one holds a complete run."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    # a previous run here stops being one first, and leaves nothing the new one lacks
    for name in (CONFIG, DATA_REPORT, PREDICTIONS, TRUST, TRUST_STATS):
        (run / name).unlink(missing_ok=True)
    save_tensors(run / WEIGHTS, model.state_dict(), metadata={"format": "transferkit-run"})
    trust = getattr(model, "trust", None)
    save_trust(run, trust)
    own = {**calibration_record(model, predictions), **trust_record(trust, predictions)}
    if getattr(model, "tta_record", None) is not None:
        own["tta"] = model.tta_record
    metrics = {**own, **metrics}
    atomic_write_text(run / METRICS, to_json(metrics))
    atomic_write_text(run / HISTORY, history_csv(history))
    if data_report is not None:
        atomic_write_text(run / DATA_REPORT, to_json(data_report))
    if predictions:
        atomic_write_text(run / PREDICTIONS, predictions_csv(predictions, classes))
    # last: config.json is what makes the folder a finished run (a kill before it
    # leaves an interrupted fit, which --resume completes)
    atomic_write_text(run / CONFIG, to_json(_run_config(model, classes, fit_config, run)))
    fsync_dir(run)
    return run


def calibration_record(model: TransferModel, predictions: list[dict] | None) -> dict:
    """metrics.json's calibration fields: the head's ``temperature``, and ``ece``
    and ``ece_uncalibrated`` on the images the report evaluates (the test split when
    there is one, else validation; ``ece_split`` says which), from the prediction
    rows (calibrated probabilities) and the temperature."""
    temperature = float(getattr(model.head, "temperature", 1.0))
    record: dict = {"temperature": temperature}
    rows = predictions or []
    split = "test" if any(r["split"] == "test" for r in rows) else "val"
    rows = [r for r in rows if r["split"] == split]
    if rows:
        probs = np.array([r["probs"] for r in rows], dtype=np.float64)
        labels = np.array([int(r["label"]) for r in rows])
        record.update(calibration_fields(probs, labels, temperature), ece_split=split)
    return record


def trust_record(trust, predictions: list[dict] | None) -> dict:
    """metrics.json's trust fields: the OOD method, threshold and rate, the conformal
    quantile and coverage asked for, and on the evaluated images (test, else
    validation) the ``coverage`` and ``mean_set_size`` of the prediction sets. A
    model without trust data (a run from before them) gets them null, and why."""
    if trust is None:
        return {
            "ood_method": None,
            "coverage": None,
            "mean_set_size": None,
            "trust_reason": NOT_RECORDED,
        }
    record = trust.summary()
    rows = predictions or []
    split = "test" if any(r["split"] == "test" for r in rows) else "val"
    rows = [r for r in rows if r["split"] == split]
    quantile = trust.quantile
    if rows and quantile is not None:
        probs = np.array([r["probs"] for r in rows], dtype=np.float64)
        labels = np.array([int(r["label"]) for r in rows])
        record.update(set_metrics(probs, labels, quantile), coverage_split=split)
    return record


def _run_config(model: TransferModel, classes, fit_config: dict, run: Path) -> dict:
    head = model.head
    return {
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


def load_run(run_dir: str | Path, *, backbone: nn.Module | None = None) -> LoadedRun:
    """Rebuild the trained model of a run directory, refusing altered weights."""
    run = Path(run_dir)
    if not (run / CONFIG).is_file():
        raise InputError(f"{str(run)!r} is not a transferkit run directory (no {CONFIG})")
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{str(run / CONFIG)!r} is not valid JSON: {exc}") from None
    problem = _config_problem(config)
    if problem:
        raise InputError(
            f"{str(run / CONFIG)!r} is not a usable run record: {problem}; "
            "restore the file, or fit the run again"
        )
    weights = run / WEIGHTS
    if not weights.is_file():
        raise InputError(f"{str(weights)!r} is missing")
    if file_sha256(weights) != config.get("weights_sha256"):
        raise InputError(
            f"{str(weights)!r} does not match the digest in {CONFIG}: the file was truncated "
            "or altered; refusing to load a model that is not the one trained"
        )
    bb = rebuild_backbone(config["backbone"], backbone)
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
    model.trust = load_trust(run)  # None for a run fitted before trust data existed
    return LoadedRun(model, config, config["classes"], run)


def _config_problem(config) -> str | None:
    """What makes a run's config.json unusable (a missing key, a wild value), or None."""
    if not isinstance(config, dict):
        return "it is not a JSON object"
    for key, kind in _CONFIG_KEYS.items():
        if not isinstance(config.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    classes = config["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        return "'classes' must list at least 2 class names"
    if not isinstance(config["preprocessing"].get("data_config"), dict):
        return "'preprocessing' lacks 'data_config'"
    return _head_problem(config["head"], len(classes))


def _head_problem(head: dict, n_classes: int) -> str | None:
    for key, kind in (("in_features", int), ("num_classes", int), ("hidden", int)):
        if not isinstance(head.get(key), kind) or isinstance(head.get(key), bool):
            return f"head {key!r} is missing or not a whole number"
    if head["num_classes"] != n_classes:
        return f"head 'num_classes' is {head['num_classes']}, but {n_classes} classes are listed"
    if not 0 < head["in_features"] <= _MAX_WIDTH or not 0 <= head["hidden"] <= _MAX_WIDTH:
        return f"head widths {head['in_features']}/{head['hidden']} are out of range"
    if not isinstance(head.get("pooling"), str) or not isinstance(head.get("dropout"), _NUMBER):
        return "head 'pooling' or 'dropout' is missing"
    return None


_CONFIG_KEYS = {
    "classes": list,
    "backbone": dict,
    "head": dict,
    "preprocessing": dict,
    "weights_sha256": str,
}
_MAX_WIDTH = 1 << 20
_NUMBER = (int, float)


def preprocessing_of(loaded: LoadedRun) -> tuple[dict, int | None]:
    p = loaded.config["preprocessing"]
    dc = dict(p["data_config"])
    dc["input_size"] = tuple(dc["input_size"])
    return dc, p.get("image_size")


class Run:
    """One run directory, and everything that reads or writes it.

    While a fit runs: :meth:`logging` (train.log gets every line, per-epoch detail
    included), :meth:`start` (the settings a resume needs) and :meth:`callbacks` (a
    checkpoint after each epoch, and restoring one). After it: :meth:`save` (model,
    config, metrics, history, data report, predictions; checkpoints removed) and
    :meth:`write_report`. Later: :meth:`load`.

    Example:
        >>> run = Run("runs/cats")                      # doctest: +SKIP
        >>> loaded = run.load()                         # doctest: +SKIP
        >>> loaded.classes                              # doctest: +SKIP
        ['cat', 'dog']
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._log: _LogFile | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # ------------------------------------------------------------------ training
    @property
    def checkpointer(self):
        from .checkpoints import Checkpointer

        return Checkpointer(self.path / CHECKPOINT_DIR)

    def claim(self, *, resume: bool = False, overwrite: bool = False):
        """A context that holds the folder for one fit: locked against a second fit,
        checked against what is there (see :mod:`transferkit.run_folder`), left as it
        was found if the fit is refused."""
        from .run_folder import Claim

        self._claim = Claim(self.path, resume=resume, overwrite=overwrite)
        return self._claim

    def _fit_record(self) -> dict:
        saved = self.path / CHECKPOINT_DIR / FIT_CONFIG
        if not saved.is_file():
            raise InputError(f"nothing to resume in {str(self.path)!r}: no checkpoint there")
        try:
            record = json.loads(saved.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {str(saved)!r}: {exc}") from None
        return record if "settings" in record else {"settings": record, "data": None}

    def saved_settings(self) -> dict:
        """The settings of the interrupted fit to resume; an error if there is none."""
        return self._fit_record()["settings"]

    def saved_data(self) -> dict | None:
        """The interrupted fit's data fingerprint (see :mod:`transferkit.resuming`)."""
        return self._fit_record().get("data")

    def start(self, settings: dict, data: dict | None = None) -> None:
        """The fit is about to write: replace a previous run (``--overwrite``), open
        train.log, and record the settings and data fingerprint a resume checks."""
        claim = getattr(self, "_claim", None)
        removed = claim.begin() if claim is not None else []
        if self._log is not None:
            self._log.open()
        if removed:
            log.info("--overwrite: removed the previous run in %s", self.path)
            log.debug("removed: %s", ", ".join(removed))
        folder = self.path / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        record = {"format": 2, "settings": settings, "data": data}
        atomic_write_text(folder / FIT_CONFIG, to_json(record))

    def callbacks(self, *, resume: bool = False) -> list:
        """Save a checkpoint after each epoch; with ``resume``, restore the phase's
        checkpoint at its start (a new fit never restores one)."""
        from .training import Checkpoint, ResumeFromCheckpoint

        checkpointer = self.checkpointer
        return [ResumeFromCheckpoint(checkpointer if resume else None), Checkpoint(checkpointer)]

    def logging(self):
        """A context in which the ``transferkit`` logger also writes to train.log
        (DEBUG: per-epoch detail included; consoles keep their own level). Lines
        logged before :meth:`start` wait in memory: a refused fit writes no file."""
        self._log = _LogFile(self.path / LOG)
        return self._log

    # -------------------------------------------------------------- after a fit
    def save(self, **record) -> Path:
        """Write the run's files (see :func:`save_run` for ``record``) and remove the
        checkpoints, which only an interrupted fit needs."""
        save_run(self.path, **record)
        self.checkpointer.clear()
        return self.path

    def write_report(self) -> Path:
        """Build report.html (and its plots) from the run's files."""
        from .reports import write_run_report

        return write_run_report(self.path)

    # -------------------------------------------------------------------- later
    def load(self, *, backbone: nn.Module | None = None) -> LoadedRun:
        """Rebuild the trained model (``backbone``: the module architecture, for runs
        trained on a Python module)."""
        return load_run(self.path, backbone=backbone)

    def history(self) -> list[dict]:
        return read_history(self.path)


class _LogFile(logging.Handler):
    """train.log: a handler on the ``transferkit`` logger that keeps the records it
    gets until :meth:`open`, then writes them and every later one to the file."""

    def __init__(self, path: Path):
        super().__init__(logging.DEBUG)
        self.path = path
        self.file: logging.FileHandler | None = None
        self.pending: list[logging.LogRecord] = []

    def open(self) -> None:
        if self.file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(self.path, encoding="utf-8", errors="backslashreplace")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for record in self.pending:
            self.file.handle(record)
        self.pending.clear()

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.handle(record)
        else:
            self.pending.append(record)

    def __enter__(self):
        logger = logging.getLogger("transferkit")
        self.level = logger.level
        logger.addHandler(self)
        logger.setLevel(logging.DEBUG)
        for h in logger.handlers:  # consoles keep their own level; DEBUG goes to the file
            if h is not self and h.level == logging.NOTSET:
                h.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("transferkit")
        logger.removeHandler(self)
        logger.setLevel(self.level)
        if self.file is not None:
            self.file.close()
