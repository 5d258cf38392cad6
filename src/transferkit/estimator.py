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

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import create_backbone
from .checkpoints import Checkpointer
from .config import FitConfig
from .engine import evaluate
from .errors import InputError
from .features import FeatureCache
from .runs import LOG, load_run, preprocessing_of, save_run
from .strategies import FitContext, run_strategy
from .strategies.common import cached_features, image_dataset, labels_of, make_loader

log = logging.getLogger("transferkit")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


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
        """Train on ``data`` (folder, CSV or ``(images, labels[, classes])``); returns self."""
        from .data import load_data

        started = time.perf_counter()
        run = Path(run_dir) if run_dir is not None else None
        handler, level = _attach_log(run) if run is not None else (None, None)
        try:
            cfg = self._resolved_config(run, resume).validate()
            splits = load_data(data, val_split=cfg.val_split, seed=cfg.seed)
            for warning in splits.report.warnings:
                log.warning("data: %s", warning)
            backbone = create_backbone(
                self.backbone_module or cfg.backbone, weights=cfg.weights, cut=cfg.cut
            )
            ctx = FitContext(
                config=cfg,
                backbone=backbone,
                splits=splits,
                device=resolve_device(cfg.device),
                cache=FeatureCache(cfg.cache_dir),
                checkpointer=Checkpointer(run / "checkpoint") if run is not None else None,
                on_epoch_end=self.on_epoch_end,
            )
            if ctx.checkpointer is not None:
                ctx.checkpointer.folder.mkdir(parents=True, exist_ok=True)
                (ctx.checkpointer.folder / "fit_config.json").write_text(_config_json(cfg))
            torch.manual_seed(cfg.seed)
            log.info(
                "fit: %d train / %d val / %d test images, %d classes, backbone %s "
                "(cut %s), strategy %s",
                len(splits.train),
                len(splits.val),
                len(splits.test),
                len(splits.classes),
                backbone.name,
                backbone.cut,
                cfg.strategy,
            )
            result = run_strategy(cfg.strategy, ctx)
            self.model_ = result.model.eval()
            self.classes_ = list(splits.classes)
            self.history_ = list(ctx.history)
            self.config_ = ctx.config  # auto's decision included (image size, cut, ...)
            self.data_report_ = splits.report.to_dict()
            self.split_ = splits.split
            self.metrics_ = self._final_metrics(
                ctx, result, time.perf_counter() - started, requested=cfg.strategy
            )
            if run is not None:
                self.save(run)
                ctx.checkpointer.clear()
                from .reports import write_run_report

                write_run_report(run)
                log.info("run saved to %s", run)
            return self
        finally:
            if handler is not None:
                logging.getLogger("transferkit").removeHandler(handler)
                logging.getLogger("transferkit").setLevel(level)
                handler.close()

    def _resolved_config(self, run: Path | None, resume: bool) -> FitConfig:
        if not resume:
            return dataclasses.replace(self.config)
        saved = run / "checkpoint" / "fit_config.json" if run is not None else None
        if saved is None or not saved.is_file():
            raise InputError(f"nothing to resume in {str(run)!r}: no checkpoint there")
        log.info("resuming the interrupted run in %s", run)
        return FitConfig.from_file(saved)

    def _final_metrics(self, ctx: FitContext, result, seconds: float, requested: str) -> dict:
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
        metrics["seconds_total"] = seconds
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
            out.append(self.model_.predict_proba(torch.stack(batch).to(device)).cpu())
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
    if result.frozen_base:
        x = cached_features(ctx, examples, split)
        batches = [(x[i : i + 1024], y[i : i + 1024]) for i in range(0, len(y), 1024)]
        return evaluate(head, batches, head.loss, head.probabilities, ctx.device, keep=keep)
    loader = make_loader(ctx, image_dataset(ctx, examples, train=False), shuffle=False)
    return evaluate(model, loader, head.loss, head.probabilities, ctx.device, keep=keep)


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
