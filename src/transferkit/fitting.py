"""What ``TransferClassifier.fit`` does around :func:`~transferkit.train.train`: the
environment and the run directory.

In order: check the settings; claim the run directory (locked, and refused if it
holds something this fit may not touch: see run_folder.py); join the torchrun
processes if there are any and pick the device; on ``--resume``, take the
interrupted fit's settings from its run directory; create the backbone (rank 0's
weights for everyone) and check what only it can judge (cut, unfreeze, image size);
load and check the data (rank 0 first: its verdict cache spares the others the
decoding), on ``--resume`` against the interrupted fit's; train; turn the result
into metrics and prediction rows; rank 0 writes the run directory (train.log all
along, checkpoints each epoch, then model, records, and config.json last, then the
report). Every process returns the same model and metrics.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import distributed, progress
from .backbones import create_backbone
from .compute import create_compute, resolve_device
from .config import FitConfig
from .doctor.record import fit_record, write_record
from .errors import InputError
from .features import FeatureCache
from .resuming import data_difference, data_record, resumed_settings
from .runs import Run
from .train import TrainResult, check_settings, train
from .training import ResumeFromCheckpoint, Runtime

log = logging.getLogger("transferkit")


@dataclass
class Fitted:
    """A finished fit: the training result and what the run directory records."""

    result: TrainResult
    classes: list[str]
    metrics: dict
    predictions: list[dict] = field(default_factory=list)
    data_report: dict = field(default_factory=dict)
    split: dict = field(default_factory=dict)
    leaks: list[dict] | None = None  # None: not checked (--no-leak-check)


def fit(
    data,
    config: FitConfig,
    *,
    module=None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks=(),
) -> Fitted:
    """Fit ``data`` with ``config`` (``module``: a torch or Keras model object to
    use as the backbone), writing ``run_dir`` if given. See the module docstring.

    ``run_dir`` must be new or empty; ``resume`` continues the interrupted fit there
    (with the same data and settings), ``overwrite`` replaces a run there."""
    if resume and run_dir is None:
        raise InputError(
            "nothing to resume: resume=True needs run_dir, the interrupted fit's folder"
        )
    config.validate()  # cheap checks before the folder is touched
    started = time.perf_counter()
    env = distributed.environment()
    run = Run(run_dir) if run_dir is not None and env.is_main else None  # rank 0 writes
    with contextlib.ExitStack() as stack:
        if run is not None:
            stack.enter_context(run.claim(resume=resume, overwrite=overwrite))
            stack.enter_context(run.logging())
        if not env.is_main:
            stack.enter_context(_quiet())
        asked = config.device
        device = resolve_device(asked, env.local_rank)
        collective = distributed.setup(device, env)
        stack.callback(distributed.teardown, collective)
        config = _settings(config, run if resume else None, collective)
        if config.device != asked:  # a resumed run brings its own
            device = resolve_device(config.device, env.local_rank)
        runtime = Runtime(create_compute(device, config.precision, config.compile), collective)
        fitted = _fit(data, config, module, run, runtime, callbacks, resume=resume)
        fitted.metrics["seconds_total"] = time.perf_counter() - started
        if collective.active:
            fitted.metrics = collective.broadcast_json(fitted.metrics)
        if run is not None:
            _save(run, fitted)
        collective.barrier()  # nobody returns before the run directory is complete
    return fitted


def _settings(config: FitConfig, resumed: Run | None, collective) -> FitConfig:
    """The settings to train with: on resume, those saved in the run (refusing other
    ones given); rank 0's are everyone's (the other processes may not see the run
    directory at all)."""
    if resumed is not None:
        saved = FitConfig.from_dict(resumed.saved_settings())
        config = resumed_settings(saved, config)
        log.info("resuming the interrupted fit in %s", resumed.path)
    if collective.active:
        config = FitConfig.from_dict(collective.broadcast_json(config.to_dict()))
    return config.validate()


def _fit(
    data, config: FitConfig, module, run: Run | None, runtime: Runtime, callbacks, *, resume
) -> Fitted:
    collective = runtime.collective
    torch.manual_seed(config.seed)  # --weights none: the random init follows --seed too
    backbone = create_backbone(module or config.backbone, weights=config.weights, cut=config.cut)
    # what only the backbone can judge (cut, unfreeze, image size), before the data scan
    check_settings(backbone, config, runtime.compute)
    collective.broadcast_module(backbone)  # rank 0's weights, whatever happened elsewhere
    splits = _load_data(data, config, collective)
    leaks = _leak_check(splits) if collective.is_main and config.leak_check else None
    record = data_record(splits)
    if resume:
        _check_same_data(run, record, collective)
    if run is not None:
        run.start(config.to_dict(), record)
    _log_start(config, splits, backbone, runtime)
    own = run.callbacks(resume=resume) if run is not None else [ResumeFromCheckpoint(None)]
    result = train(
        backbone,
        splits,
        config,
        callbacks=[*own, *callbacks],
        features=FeatureCache(config.cache_dir, writable=collective.is_main),
        runtime=runtime,
    )
    return Fitted(
        result=result,
        classes=list(splits.classes),
        metrics=_metrics(result, splits) if collective.is_main else {},
        predictions=_prediction_rows(result, splits),
        data_report=splits.report.to_dict(),
        split=splits.split,
        leaks=leaks,
    )


def _leak_check(splits) -> list[dict]:
    """Validation or test images that are copies of training images (exact ones,
    which loading drops, and near ones by their perceptual hash), one warning line
    per group; the run records them in doctor.json. Measured on 2 shared cores: 0.41 s
    for the demo's 600 Fashion-MNIST images, 0.86 s for 1,215 (see docs/doctor.md)."""
    from .doctor.leaks import find_leaks, warn_leaks

    started = time.perf_counter()
    leaks = find_leaks(splits)
    warn_leaks(leaks)
    log.debug("leak check: %d group(s) in %.2f s", len(leaks), time.perf_counter() - started)
    return leaks


def _check_same_data(run: Run | None, record: dict, collective) -> None:
    """--resume with other data than the interrupted fit's is refused (rank 0 judges)."""
    difference = data_difference(run.saved_data(), record) if run is not None else None
    if collective.active:
        difference = collective.broadcast_json(difference)
    if difference:
        raise InputError(
            f"--resume needs the interrupted fit's data, and {difference}; resume with "
            "that data, or start over with --overwrite"
        )


def _load_data(data, config: FitConfig, collective):
    """Rank 0 scans first: its verdict cache spares the others the decoding, and with
    every verdict a hit they have nothing to write."""
    from .data import ScanOptions, load_data
    from .data.copies import working_side

    # the scan makes each large image's working copy in the decode that verifies it:
    # at the size this fit needs when it is known (else the default, for up to 224 px)
    scan = ScanOptions(copy_side=working_side(config.image_size)) if config.image_size else None
    if not collective.is_main:
        collective.barrier()
    splits = load_data(data, val_split=config.val_split, seed=config.seed, scan=scan)
    if collective.is_main:
        collective.barrier()
    for warning in splits.report.warnings:
        log.warning("data: %s", warning)
    return splits


def _log_start(config: FitConfig, splits, backbone, runtime: Runtime) -> None:
    """The data, the backbone and where it runs; the plan (strategy, cut) is logged
    by ``train`` once it is made, so no line names a cut that is not used."""
    compute = runtime.compute
    log.info(
        "fit: %d train / %d val / %d test images, %d classes, backbone %s, %s %s%s",
        len(splits.train),
        len(splits.val),
        len(splits.test),
        len(splits.classes),
        backbone.name,
        compute.device,
        compute.precision,
        ", compiled" if compute.compile else "",
    )


def _metrics(result: TrainResult, splits) -> dict:
    """metrics.json: what was trained, how each phase went, final scores."""
    model, cfg = result.model, result.config
    metrics = {
        "strategy": cfg.strategy,
        "requested_strategy": result.requested_strategy,
        "backbone": model.backbone.name,
        "cut": model.backbone.cut,
        "image_size": cfg.image_size or model.backbone.input_size[1],
        "classes": list(splits.classes),
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "phases": [p.to_dict() for p in result.phases],
        "feature_cache": dict(result.feature_cache),
    }
    for split, ev in result.evaluations.items():
        metrics[f"{split}_accuracy"] = ev.accuracy
        metrics[f"{split}_loss"] = ev.loss
    if result.plan.decision is not None:
        metrics["decision"] = result.plan.decision.to_dict()
    if result.selection is not None:
        metrics["selection"] = result.selection
    if result.calibration:  # the temperature, and what it was fitted on (or why not)
        metrics["temperature"] = result.calibration["temperature"]
        metrics["calibration_images"] = result.calibration["images"]
        if result.calibration.get("reason"):
            metrics["calibration_reason"] = result.calibration["reason"]
    return metrics


def _prediction_rows(result: TrainResult, splits) -> list[dict]:
    """predictions.csv: per validation and test image, its label and probabilities."""
    rows = []
    for split, ev in result.evaluations.items():
        examples = getattr(splits, split)
        probs = ev.probabilities.numpy()
        rows += [
            {"split": split, "path": e.path, "label": e.label, "probs": p.tolist()}
            for e, p in zip(examples, probs, strict=True)
        ]
    return rows


def _save(run: Run, fitted: Fitted) -> None:
    result = fitted.result
    run.save(
        model=result.model,
        classes=fitted.classes,
        fit_config=result.config.to_dict(),
        metrics=fitted.metrics,
        history=result.history,
        data_report=fitted.data_report,
        predictions=fitted.predictions,
    )
    # before the report, which shows them; always written, so no earlier run's stays
    write_record(
        run.path, fit_record(fitted.data_report.get("source", {}).get("path"), fitted.leaks)
    )
    run.write_report()
    log.info("run saved to %s", run.path)


@contextlib.contextmanager
def _quiet():
    """Processes other than rank 0 log only errors and draw no progress bars, so a
    torchrun job prints one account of the run, not one per process."""
    logger = logging.getLogger("transferkit")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with progress.silenced():
            yield
    finally:
        logger.setLevel(level)


__all__ = ["Fitted", "fit"]
