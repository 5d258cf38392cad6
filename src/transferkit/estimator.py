"""``TransferClassifier``: the whole workflow behind a scikit-learn-style estimator.

It follows scikit-learn's rules: every setting is an explicit keyword argument of
``__init__``, stored unchanged (``get_params``/``set_params``, so
``sklearn.base.clone`` works); ``fit`` does the work and returns ``self``; learned
attributes end in ``_`` (``classes_``, ``history_``, ``metrics_``, ``model_``,
``config_``). ``save(dir)`` writes a run directory; ``load(dir)`` reads one back.

It is a thin shell: ``fit`` turns the settings into a :class:`FitConfig` and calls
:func:`transferkit.fitting.fit` (environment and run directory) around
:func:`transferkit.train.train` (the work); predictions go through the same
:class:`~transferkit.predict.Predictor` as ``transferkit predict``.

Example:
    >>> clf = TransferClassifier("efficientnet_lite0", strategy="fine-tune", image_size=96)
    >>> clf.fit("data/")                       # doctest: +SKIP
    >>> clf.predict(["cat.jpg", "dog.png"])    # doctest: +SKIP
    ['cat', 'dog']
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from .config import FitConfig
from .errors import InputError, close_matches
from .heads import HeadConfig

__all__ = ["TransferClassifier", "load"]

# Settings of the estimator that are not FitConfig fields: how fit reports, not what
# it trains.
_NOT_FIT_SETTINGS = ("verbose",)
# Old keyword -> its name now; the old one still works, with a FutureWarning.
_RENAMED = {"epochs": "head_epochs"}


def _suggestion(name: str, names) -> str:
    """ "; did you mean 'lr'?" (or two names), or an empty string."""
    hits = close_matches(name, names, n=2)
    return f"; did you mean {' or '.join(map(repr, hits))}?" if hits else ""


def _renamed(params: dict, names) -> dict:
    """``params`` with old keywords under their new names (with a FutureWarning)."""
    out = dict(params)
    for old, new in _RENAMED.items():
        if old in out and old not in names:
            warnings.warn(
                f"TransferClassifier: {old}= is now {new}= (max epochs of the head phase; "
                f"fine_tune_epochs= is the fine-tuning phase's)",
                FutureWarning,
                stacklevel=3,
            )
            out[new] = out.pop(old)
    return out


class _Settings(type):
    """Makes ``TransferClassifier(lrr=1)`` fail with the closest settings named, while
    ``__init__`` keeps one explicit keyword per setting (scikit-learn's rule, which
    ``help()``, editors and ``sklearn.base.clone`` rely on)."""

    def __call__(cls, *args, **kwargs):
        names = cls._param_names()
        kwargs = _renamed(kwargs, names)
        for name in kwargs:
            if name not in names:
                raise TypeError(
                    f"{cls.__name__}() got an unexpected keyword argument {name!r}"
                    f"{_suggestion(name, names)}"
                )
        return super().__call__(*args, **kwargs)


class TransferClassifier(metaclass=_Settings):
    """Transfer-learning image classifier. See the module docstring and
    docs/training.md for what each setting does; the defaults are ``FitConfig``'s.

    Args:
        backbone: a spec for ``create_backbone`` (built-in or timm name, checkpoint
            or Keras file) or a torch/Keras model object.
        strategy: ``"auto"`` (measured on your data), ``"feature-extract"`` or
            ``"fine-tune"``.
        weights: a local weights file, or ``"none"`` for random initialisation.
        cut: the layer to cut the backbone at (default: measured, or the top).
        unfreeze: what fine-tuning unfreezes: ``"all"`` or ``"top:N"`` whole blocks.
        bn: BatchNorm during fine-tuning: ``"frozen"`` (inference mode) or ``"train"``.
        head: the new head's shape (:class:`HeadConfig`: pooling, hidden, dropout).
        image_size: square input size in pixels (default: suggested from the data).
        val_split: validation fraction when the data have no ``val/`` split.
        seed: seeds splits, initialisation, shuffling and augmentation.
        device, precision, compile: where and how to compute.
        head_epochs, lr, patience, head_batch_size: the head phase (on cached
            features); ``head_epochs`` is its ceiling (early stopping ends it sooner).
        fine_tune_epochs, fine_tune_lr, fine_tune_patience, layer_decay, batch_size,
            augment, label_smoothing, weight_decay, schedule: the fine-tuning phase.
        class_weight: ``"balanced"`` weighs each class by 1/its image count; ``None``
            counts every image once.
        selection: how the head is chosen: ``"cv"`` (k-fold cross-validation on every
            label, then refitted on all), ``"holdout"`` (the validation split),
            ``"auto"`` (``cv`` when the data are small).
        workers: data loader processes; cache_dir: the feature cache folder.
        unknown_rate: the share of known images a prediction may call ``unknown``
            (the OOD threshold is chosen on held-out images for it).
        coverage: how often a prediction set must hold the true class (split
            conformal, on held-out images).
        tta: try test-time augmentation (the mean over the image and its mirror
            image); the run keeps it only if it improves validation.
        leak_check: look for images shared between the splits (exact and near
            copies) and warn; ``False`` skips it, and the run says it was skipped.
        verbose: show progress and log lines on stderr while fitting (when the
            program has not configured logging itself); ``False`` is silent.
    """

    def __init__(  # noqa: PLR0913 - scikit-learn: one explicit keyword per setting
        self,
        backbone: str | nn.Module = "efficientnet_lite0",
        strategy: str = "auto",
        *,
        weights: str | None = None,
        cut: str | None = None,
        unfreeze: str = "all",
        bn: str = "frozen",
        head: HeadConfig | None = None,
        image_size: int | None = None,
        val_split: float = 0.2,
        seed: int = 0,
        device: str = "auto",
        precision: str = "auto",
        compile: bool = False,
        head_epochs: int = 100,
        lr: float = 3e-3,
        patience: int = 8,
        head_batch_size: int = 256,
        fine_tune_epochs: int = 15,
        fine_tune_lr: float = 3e-4,
        fine_tune_patience: int = 8,
        layer_decay: float | None = None,
        batch_size: int = 32,
        augment: bool = True,
        label_smoothing: float = 0.0,
        weight_decay: float = 1e-4,
        schedule: str = "cosine",
        class_weight: str | None = None,
        selection: str = "auto",
        workers: int | None = None,
        cache_dir: str | None = None,
        unknown_rate: float = 0.05,
        coverage: float = 0.9,
        tta: bool = False,
        leak_check: bool = True,
        verbose: bool = True,
    ):
        # every setting stored unchanged under its own name (scikit-learn's rule)
        settings = dict(locals())
        del settings["self"]
        vars(self).update(settings)

    # ------------------------------------------------------------ parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        """The settings, as given to ``__init__`` (scikit-learn's contract)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> TransferClassifier:
        """Change settings by name; returns ``self``."""
        names = self._param_names()
        for name, value in _renamed(params, names).items():
            if name not in names:
                hint = _suggestion(name, names) or f" (parameters: {', '.join(names)})"
                raise InputError(f"unknown parameter {name!r} for TransferClassifier{hint}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        changed = [
            f"{k}={v!r}" if not isinstance(v, nn.Module) else f"{k}=<{type(v).__name__}>"
            for k, v in self.get_params().items()
            if v is not defaults[k].default and v != defaults[k].default
        ]
        return f"TransferClassifier({', '.join(changed)})"

    @classmethod
    def from_config(cls, config: FitConfig, backbone=None) -> TransferClassifier:
        """An estimator with ``config``'s settings (``backbone``: a model object that
        replaces ``config.backbone``)."""
        params = {f.name: getattr(config, f.name) for f in dataclasses.fields(FitConfig)}
        if backbone is not None:
            params["backbone"] = backbone
        return cls(**params)

    def to_config(self) -> FitConfig:
        """The settings as a validated :class:`FitConfig` (what a run records)."""
        params = self._fit_settings()
        if not isinstance(params["backbone"], str):
            params["backbone"] = f"<module {type(params['backbone']).__name__}>"
        if params["head"] is None:
            params["head"] = HeadConfig()
        return FitConfig(**params).validate()

    def _fit_settings(self) -> dict:
        """The settings under FitConfig's field names. A setting FitConfig does not
        have (yet) is dropped at its default and refused otherwise."""
        params = self.get_params()
        for name in _NOT_FIT_SETTINGS:
            params.pop(name)
        fields = {f.name for f in dataclasses.fields(FitConfig)}
        defaults = inspect.signature(type(self).__init__).parameters
        for name in sorted(params.keys() - fields):
            if params.pop(name) != defaults[name].default:
                raise InputError(f"{name}= is not supported by this version of FitConfig")
        return params

    # -------------------------------------------------------------- training
    def fit(
        self,
        X,
        y=None,
        *,
        run_dir: str | Path | None = None,
        resume: bool = False,
        overwrite: bool = False,
        callbacks=(),
    ):
        """Train; returns ``self``. Progress and log lines go to stderr as
        ``transferkit fit`` shows them (``verbose=False``: silent).

        Args:
            X: a folder (class sub-folders, or ``train/`` [``val/``] [``test/``]), a
                CSV of ``path,label``, or a list of images (paths or arrays) with ``y``.
            y: labels of ``X`` when ``X`` is a list of images.
            run_dir: write the run directory here (model, metrics, report, train.log).
            resume: continue the interrupted fit in ``run_dir``, with its settings.
            overwrite: replace what an earlier fit left in ``run_dir``.
            callbacks: training callbacks (``transferkit.training``), e.g.
                ``EpochEndHook(fn)``; they run in every phase.

        Under torchrun every process calls this with the same arguments (see
        docs/distributed.md): they share feature extraction and fine-tuning, rank 0
        alone writes ``run_dir`` and the feature cache, and every process returns with
        the same model and metrics.
        """
        from .fitting import fit
        from .progress import reporting

        data = X if y is None else (X, y)
        module = None if isinstance(self.backbone, str) else _own_copy(self.backbone)
        replace = {"overwrite": True} if overwrite else {}  # fitting.fit's default is False
        with _long_lived_objects_frozen(), reporting(self.verbose):
            fitted = fit(
                data,
                self.to_config(),
                module=module,
                run_dir=run_dir,
                resume=resume,
                callbacks=list(callbacks),
                **replace,
            )
        result = fitted.result
        self.model_ = result.model
        self.classes_ = fitted.classes
        self.config_ = result.config  # the plan's choices included (image size, cut, ...)
        self.history_ = list(result.history)
        self.metrics_ = fitted.metrics
        self.predictions_ = fitted.predictions
        self.data_report_ = fitted.data_report
        self.split_ = fitted.split
        self.run_dir_ = Path(run_dir) if run_dir is not None else None
        return self

    # ------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise InputError("this TransferClassifier is not fitted yet: call fit() or load()")

    def predictor(self, batch_size: int = 64):
        """A :class:`~transferkit.predict.Predictor` over the fitted model: the same
        path as ``transferkit predict`` on the saved run."""
        from .predict import Predictor

        self._check_fitted()
        return Predictor.for_model(self.model_, self.classes_, self._preprocessing(), batch_size)

    def _preprocessing(self) -> dict:
        """What a run records as its preprocessing, from the fitted model."""
        return {
            "data_config": self.model_.backbone.data_config,
            "image_size": self.config_.image_size,
        }

    def predict_proba(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities for image paths, PIL images or HxW[xC] uint8 arrays."""
        return self.predictor(batch_size).predict_proba(images)

    def predict(self, images: Sequence, batch_size: int = 64) -> list[str]:
        """The most probable class of each image."""
        probs = self.predict_proba(images, batch_size)
        return [self.classes_[i] for i in probs.argmax(1)]

    def score(self, images: Sequence, labels: Sequence) -> float:
        """Accuracy on ``images`` with true class names ``labels``."""
        predicted = self.predict(images)
        return float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))

    def evaluate(self, data, batch_size: int = 64):
        """Every metric of the fitted model on labelled ``data`` (a folder or CSV; its
        ``test/`` split if it has one): what ``transferkit evaluate`` reports, as an
        :class:`~transferkit.evaluation.Evaluation` (``.metrics.accuracy``,
        ``.to_dict()``)."""
        from .evaluation import evaluate_predictor

        return evaluate_predictor(self.predictor(batch_size), data)

    def export(self, path: str | Path, format: str | None = None):
        """Export the fitted model to ONNX or TorchScript (``format``; by default from
        ``path``'s suffix) with its sidecar ``PATH.json``, checked against the torch
        model as ``transferkit export`` does; returns the
        :class:`~transferkit.export.ExportResult`."""
        from .export import export_model, export_run

        self._check_fitted()
        chosen = {"format": format} if format is not None else {}
        run_dir = getattr(self, "run_dir_", None)
        if run_dir is not None:  # the saved run, named in the sidecar
            return export_run(run_dir, path, **chosen)
        return export_model(
            self.model_,
            path,
            classes=self.classes_,
            preprocessing=self._preprocessing(),
            source={"model": "TransferClassifier (not saved)"},
            **chosen,
        )

    # ----------------------------------------------------------- persistence
    def save(self, run_dir: str | Path) -> Path:
        """Write a run directory of the fitted model (no report, no log)."""
        from .runs import save_run

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
        """The fitted estimator of a run directory (``backbone``: the module
        architecture, for runs trained on a Python module)."""
        from .runs import Run, preprocessing_of

        run = Run(run_dir)
        loaded = run.load(backbone=backbone)
        cfg = FitConfig.from_dict(loaded.config["fit"])
        clf = cls.from_config(cfg, backbone=backbone)
        clf.model_ = loaded.model
        clf.classes_ = loaded.classes
        clf.config_ = cfg
        clf.metrics_ = loaded.metrics
        clf.history_ = run.history()
        clf.run_dir_ = Path(run_dir)
        data_config, _ = preprocessing_of(loaded)
        clf.model_.backbone.data_config = data_config
        return clf


def load(run_dir: str | Path, **kwargs) -> TransferClassifier:
    """Shorthand for ``TransferClassifier.load``."""
    return TransferClassifier.load(run_dir, **kwargs)


def _own_copy(module):
    """A torch module given as the backbone is copied before fitting: cutting prunes
    the layers above the cut and freezing changes ``requires_grad``, and neither may
    happen to the object the user passed (a second ``fit`` would start from a pruned
    model). Keras models are left as they are: cutting one builds a new sub-model."""
    from .backbones.keras_loader import is_keras_model

    if is_keras_model(module) or not isinstance(module, nn.Module):
        return module
    return copy.deepcopy(module)


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
