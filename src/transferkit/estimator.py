"""``TransferClassifier``: the whole workflow behind a scikit-learn-style estimator.

Parameters are stored in ``__init__``; ``fit`` does the work and returns ``self``;
learned attributes end in ``_`` (``classes_``, ``history_``, ``metrics_``,
``model_``). ``save(dir)`` writes a run directory; ``load(dir)`` reads one back.

Example:
    >>> clf = TransferClassifier("efficientnet_lite0", strategy="fine-tune", image_size=96)
    >>> clf.fit("data/")                       # doctest: +SKIP
    >>> clf.predict(["cat.jpg", "dog.png"])    # doctest: +SKIP
    ['cat', 'dog']
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from .backbones import create_backbone
from .checkpoints import Checkpointer
from .compute import create_compute, nhwc_input, resolve_device
from .config import FitConfig
from .engine import evaluate
from .errors import InputError
from .features import FeatureCache
from .runs import LOG, load_run, preprocessing_of, save_run
from .strategies import FitContext, run_strategy
from .strategies.common import cached_features, image_dataset, labels_of, make_loader

log = logging.getLogger("transferkit")


__all__ = ["TransferClassifier", "load", "resolve_device"]


class TransferClassifier:
    """Transfer-learning image classifier. See the module docstring.

    Args:
        backbone: spec for ``create_backbone`` (name, path or torch module).
        strategy: ``"auto"`` (default: measured, see strategies/auto.py),
            ``"feature-extract"`` or ``"fine-tune"``.
        config: a full :class:`FitConfig`; keyword arguments override its fields.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "efficientnet_lite0",
        strategy: str | None = None,
        *,
        config: FitConfig | None = None,
        **params,
    ):
        base = dataclasses.replace(config) if config is not None else FitConfig()
        self.backbone_module = backbone if isinstance(backbone, nn.Module) else None
        overrides = dict(params)
        if strategy is not None:
            overrides["strategy"] = strategy
        if self.backbone_module is None:
            overrides["backbone"] = backbone
        elif config is None:
            overrides["backbone"] = f"<module {type(backbone).__name__}>"
        names = {f.name for f in dataclasses.fields(FitConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(f"unknown parameter {unknown[0]!r} for TransferClassifier")
        self.config = dataclasses.replace(base, **overrides)
        self.on_epoch_end = None  # hook for tests and callers: f(phase, epoch)

    # ------------------------------------------------------------------ training
    def fit(self, data, *, run_dir: str | Path | None = None, resume: bool = False):
        """Train on ``data`` (folder, CSV or ``(images, labels[, classes])``); returns self.

        Under torchrun every process calls this with the same arguments (see
        docs/distributed.md): they share feature extraction and fine-tuning, rank 0
        alone writes ``run_dir`` and the feature cache, and every process returns with
        the same model and metrics.
        """
        started = time.perf_counter()
        with _long_lived_objects_frozen():
            return self._fit_and_save(data, run_dir, resume, started)

    def _fit_and_save(self, data, run_dir, resume: bool, started: float):
        env = distributed.environment()
        run = Path(run_dir) if run_dir is not None else None
        writes = run if env.is_main else None  # rank 0 alone writes the run directory
        handler, level = _attach_log(writes) if writes is not None else (None, None)
        quiet = _QuietRank() if not env.is_main else None
        collective = distributed.SINGLE
        try:
            device = resolve_device(self.config.device, env.local_rank)
            collective = distributed.setup(device, env)
            cfg = self._resolved_config(writes, resume, collective)
            if cfg.device != self.config.device:  # a resumed run brings its own
                device = resolve_device(cfg.device, env.local_rank)
            ctx = self._fit(data, cfg, device, collective, writes)
            self.metrics_["seconds_total"] = time.perf_counter() - started
            if collective.active:
                self.metrics_ = collective.broadcast_json(self.metrics_)
            if writes is not None:
                self.save(writes)
                ctx.checkpointer.clear()
                from .reports import write_run_report

                write_run_report(writes)
                log.info("run saved to %s", writes)
            collective.barrier()  # nobody returns before the run directory is complete
            return self
        finally:
            distributed.teardown(collective)
            if quiet is not None:
                quiet.restore()
            if handler is not None:
                logging.getLogger("transferkit").removeHandler(handler)
                logging.getLogger("transferkit").setLevel(level)
                handler.close()

    def _fit(self, data, cfg: FitConfig, device, collective, run: Path | None) -> FitContext:
        """The work of ``fit``: data, backbone, strategy, final metrics (rank 0)."""
        from .data import load_data

        # Rank 0 scans first: its verdict cache spares the others the decoding, and
        # with every verdict a hit they have nothing to write.
        if not collective.is_main:
            collective.barrier()
        splits = load_data(data, val_split=cfg.val_split, seed=cfg.seed)
        if collective.is_main:
            collective.barrier()
        for warning in splits.report.warnings:
            log.warning("data: %s", warning)
        torch.manual_seed(cfg.seed)  # --weights none: the random init follows --seed too
        backbone = create_backbone(
            self.backbone_module or cfg.backbone, weights=cfg.weights, cut=cfg.cut
        )
        collective.broadcast_module(backbone)  # rank 0's weights, whatever happened elsewhere
        ctx = FitContext(
            config=cfg,
            backbone=backbone,
            splits=splits,
            device=device,
            cache=FeatureCache(cfg.cache_dir, writable=collective.is_main),
            checkpointer=Checkpointer(run / "checkpoint") if run is not None else None,
            on_epoch_end=self.on_epoch_end,
            compute=create_compute(device, cfg.precision, cfg.compile),
            collective=collective,
        )
        if ctx.checkpointer is not None:
            ctx.checkpointer.folder.mkdir(parents=True, exist_ok=True)
            (ctx.checkpointer.folder / "fit_config.json").write_text(_config_json(cfg))
        torch.manual_seed(cfg.seed)
        log.info(
            "fit: %d train / %d val / %d test images, %d classes, backbone %s "
            "(cut %s), strategy %s, %s %s%s",
            len(splits.train),
            len(splits.val),
            len(splits.test),
            len(splits.classes),
            backbone.name,
            backbone.cut,
            cfg.strategy,
            device,
            ctx.compute.precision,
            ", compiled" if ctx.compute.compile else "",
        )
        result = run_strategy(cfg.strategy, ctx)
        self.model_ = result.model.eval()
        self.classes_ = list(splits.classes)
        self.history_ = list(ctx.history)
        self.config_ = ctx.config  # auto's decision included (image size, cut, ...)
        self.data_report_ = splits.report.to_dict()
        self.split_ = splits.split
        self.metrics_, self.predictions_ = {}, []
        if collective.is_main:  # final evaluation: rank 0 alone, unsharded
            self.metrics_ = self._final_metrics(ctx, result, requested=cfg.strategy)
        return ctx

    def _resolved_config(
        self, run: Path | None, resume: bool, collective=distributed.SINGLE
    ) -> FitConfig:
        """The settings to train with; on ``resume``, those saved in the run. Rank 0's
        are everyone's: the other processes may not see the run directory at all."""
        cfg = dataclasses.replace(self.config)
        if resume and collective.is_main:
            saved = run / "checkpoint" / "fit_config.json" if run is not None else None
            if saved is None or not saved.is_file():
                raise InputError(f"nothing to resume in {str(run)!r}: no checkpoint there")
            log.info("resuming the interrupted run in %s", run)
            cfg = FitConfig.from_file(saved)
        if collective.active:
            cfg = FitConfig.from_dict(collective.broadcast_json(cfg.to_dict()))
        return cfg.validate()

    def _final_metrics(self, ctx: FitContext, result, requested: str) -> dict:
        cfg = ctx.config
        metrics = {
            "strategy": cfg.strategy,
            "requested_strategy": requested,
            "backbone": ctx.backbone.name,
            "cut": ctx.backbone.cut,
            "image_size": cfg.image_size or ctx.backbone.input_size[1],
            "classes": list(ctx.splits.classes),
            "n_train": len(ctx.splits.train),
            "n_val": len(ctx.splits.val),
            "n_test": len(ctx.splits.test),
            "phases": [p.to_dict() for p in result.phases],
            "feature_cache": dataclasses.asdict(ctx.cache.stats),
        }
        self.predictions_ = []
        for split in ("val", "test"):
            examples = getattr(ctx.splits, split)
            if examples:
                ev = evaluate_examples(ctx, result, examples, split, keep=True)
                metrics[f"{split}_accuracy"] = ev.accuracy
                metrics[f"{split}_loss"] = ev.loss
                self.predictions_ += prediction_rows(split, examples, ev.probabilities)
        if result.decision is not None:
            metrics["decision"] = result.decision.to_dict()
        return metrics

    # ---------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise InputError("this TransferClassifier is not fitted yet: call fit() or load()")

    def predict_proba(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities for image paths, PIL images or HxW[xC] uint8 arrays."""
        self._check_fitted()
        from .data import create_transform, open_image

        data_config, image_size = self._preprocessing
        transform = create_transform(data_config, train=False, image_size=image_size)
        channels = self.model_.backbone.input_size[0]
        device = next(self.model_.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            batch = [
                transform(_as_image(img, channels, open_image))
                for img in images[i : i + batch_size]
            ]
            x = nhwc_input(torch.stack(batch).to(device))
            out.append(self.model_.predict_proba(x).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes_)))

    def predict(self, images: Sequence, batch_size: int = 64) -> list[str]:
        probs = self.predict_proba(images, batch_size)
        return [self.classes_[i] for i in probs.argmax(1)]

    @property
    def _preprocessing(self) -> tuple[dict, int | None]:
        return self.model_.backbone.data_config, self.config_.image_size

    # -------------------------------------------------------------- persistence
    def save(self, run_dir: str | Path) -> Path:
        self._check_fitted()
        return save_run(
            run_dir,
            model=self.model_,
            classes=self.classes_,
            fit_config=self.config_.to_dict(),
            metrics=self.metrics_,
            history=self.history_,
            data_report=getattr(self, "data_report_", None),
            predictions=getattr(self, "predictions_", None),
        )

    @classmethod
    def load(cls, run_dir: str | Path, *, backbone: nn.Module | None = None) -> TransferClassifier:
        loaded = load_run(run_dir, backbone=backbone)
        cfg = FitConfig.from_dict(loaded.config["fit"])
        clf = cls(backbone if backbone is not None else cfg.backbone, cfg.strategy, config=cfg)
        clf.model_ = loaded.model
        clf.classes_ = loaded.classes
        clf.config_ = cfg
        clf.metrics_ = loaded.metrics
        from .runs import read_history

        clf.history_ = read_history(run_dir)
        data_config, _ = preprocessing_of(loaded)
        clf.model_.backbone.data_config = data_config
        return clf


def load(run_dir: str | Path, **kwargs) -> TransferClassifier:
    """Shorthand for ``TransferClassifier.load``."""
    return TransferClassifier.load(run_dir, **kwargs)


def evaluate_examples(ctx: FitContext, result, examples, split: str, keep: bool = False):
    """Loss/accuracy (and, with ``keep``, probabilities) of the final model on a split:
    on cached features when the base stayed frozen, else on the images."""
    model = result.model
    head = model.head
    y = labels_of(examples)
    if result.frozen_base:  # rank 0 alone (under torchrun): no collective here
        x = cached_features(ctx, examples, split, collective=distributed.SINGLE)
        batches = [(x[i : i + 1024], y[i : i + 1024]) for i in range(0, len(y), 1024)]
        return evaluate(head, batches, head.loss, head.probabilities, ctx.device, keep=keep)
    loader = make_loader(ctx, image_dataset(ctx, examples, train=False), shuffle=False)
    return evaluate(model, loader, head.loss, head.probabilities, ctx.compute, keep=keep)


def prediction_rows(split: str, examples, probabilities: torch.Tensor) -> list[dict]:
    """One row per example: where it is, its label, and the class probabilities."""
    probs = probabilities.numpy()
    return [
        {"split": split, "path": e.path, "label": e.label, "probs": p.tolist()}
        for e, p in zip(examples, probs, strict=True)
    ]


def _as_image(item, channels: int, open_image):
    from PIL import Image

    if isinstance(item, (str, Path)):
        return open_image(item, channels=channels)
    if isinstance(item, np.ndarray):
        item = Image.fromarray(item)
    if isinstance(item, Image.Image):
        mode = "L" if channels == 1 else "RGB"
        return item.convert(mode)
    raise InputError(f"cannot predict on a {type(item).__name__}: give paths, PIL images or arrays")


def _config_json(cfg: FitConfig) -> str:
    import json

    return json.dumps(cfg.to_dict(), indent=2)


class _QuietRank:
    """Processes other than rank 0 log only errors and draw no progress bars, so a
    torchrun job prints one account of the run, not one per process."""

    def __init__(self):
        self.logger = logging.getLogger("transferkit")
        self.level = self.logger.level
        self.progress = os.environ.get("TRANSFERKIT_PROGRESS")
        self.logger.setLevel(logging.ERROR)
        os.environ["TRANSFERKIT_PROGRESS"] = "0"

    def restore(self) -> None:
        self.logger.setLevel(self.level)
        if self.progress is None:
            os.environ.pop("TRANSFERKIT_PROGRESS", None)
        else:
            os.environ["TRANSFERKIT_PROGRESS"] = self.progress


@contextlib.contextmanager
def _long_lived_objects_frozen():
    """Keep the garbage collector off the objects that existed before ``fit``.

    torch, torchvision and timm leave ~600,000 objects that live as long as the
    process; every full collection during a fit scanned them again for nothing. A
    warm feature-extract fit with a run folder took 0.84 s with them frozen and
    0.84-1.30 s without (a full collection or not). They are unfrozen afterwards, so
    the user's process keeps its collector state; if something else froze objects
    already (the ``transferkit`` command does), this leaves that alone."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _attach_log(run: Path) -> tuple[logging.Handler, int]:
    """train.log gets every line, per-epoch detail included (DEBUG)."""
    run.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run / LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("transferkit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    for h in logger.handlers:  # consoles keep their own level; DEBUG goes to the file
        if h is not handler and h.level == logging.NOTSET:
            h.setLevel(logging.INFO)
    return handler, level
