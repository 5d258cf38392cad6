"""``train``: the whole fit as one function, with no side effects of its own.

It takes a backbone, the data splits, a typed config and callbacks, and returns a
:class:`TrainResult`. In order: the advisor plans (for ``auto``, or
``feature-extract`` without a cut, it measures; nothing runs before the plan is
fixed); the backbone is cut where the plan says; the measuring pass's features seed
the cache; the planned strategy runs; the final model is evaluated on the
validation and test splits. It writes no run directory, attaches no log handler and
sets no environment variable: its only writes go through the feature cache it is
given (and the advisor's remembered decisions beside it); checkpoints, if wanted,
are callbacks the caller passes (:class:`~transferkit.runs.Run` makes them).

Under torchrun every process calls it with the same arguments and the collective in
``runtime``; rank 0 alone evaluates the splits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .advisor import AdviceStore, Plan, make_plan
from .backbones import recut_backbone
from .calibration import TemperatureFit, fit_temperature, log_probabilities, rescale
from .config import FitConfig
from .errors import InputError, TransferkitError
from .features import FeatureCache, representation_for
from .heads import TransferModel
from .strategies import get_strategy
from .strategies.base import TrainingInputs, evaluate_split, extraction
from .training import History, InputWait, Interruption, PhaseResult, ProgressReport, Runtime
from .trust.fit import fit_trust
from .trust.tta import decide_tta

log = logging.getLogger("transferkit")


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model: the trained backbone + head, in eval mode, contiguous memory layout.
        config: the settings with the plan's choices filled in (what a run records).
        requested_strategy: the strategy asked for (``auto`` included).
        plan: what the advisor planned.
        phases: how each phase went.
        history: one row per epoch, over all phases.
        frozen_base: the base never trained (predictions can use cached features).
        evaluations: ``{"val"|"test": Evaluation}`` of the final model, probabilities
            included (rank 0 only; empty elsewhere).
        feature_cache: the cache's hits, extractions and rebuilt shards while training
            (the final evaluation's lookups not included).
        calibration: the temperature fitted on the held-out images (see
            :func:`calibrate`), how many chose it and, when it is 1.0 unfitted, why.
        trust: the OOD score's statistics and the held-out scores its ``unknown``
            threshold and the conformal prediction sets come from
            (:class:`~transferkit.trust.TrustState`; rank 0 only, also set as
            ``model.trust``).
    """

    model: TransferModel
    config: FitConfig
    requested_strategy: str
    plan: Plan
    phases: list[PhaseResult]
    history: list[dict]
    frozen_base: bool
    evaluations: dict = field(default_factory=dict)
    feature_cache: dict = field(default_factory=dict)
    selection: dict | None = None
    calibration: dict = field(default_factory=dict)
    trust: object = None


def train(
    backbone,
    splits,
    config: FitConfig,
    *,
    callbacks: Sequence = (),
    features: FeatureCache | None = None,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Plan, cut, run the planned strategy, evaluate. See the module docstring.

    Args:
        backbone: a ``Backbone`` (uncut, or cut where you want it); the plan may
            re-cut it, and the result's model holds the backbone that was trained.
        splits: ``DatasetSplits`` from ``load_data``.
        config: a validated ``FitConfig``.
        callbacks: run in every training phase, besides the history, progress and
            Ctrl-C handling ``train`` adds (e.g. the run's checkpoints, hooks).
        features: the feature cache (default: ``FitConfig.cache_dir``'s).
        runtime: device, precision, layout, and the torchrun processes.
    """
    runtime = runtime or Runtime()
    backbone = check_settings(backbone, config, runtime.compute)  # before any image is read
    features = features or FeatureCache(config.cache_dir)
    history = History()
    own = (history, InputWait(), ProgressReport(), Interruption())
    inputs = _planned_inputs(backbone, splits, config, features, runtime, (*own, *callbacks))
    _check_processes_agree(inputs)
    torch.manual_seed(config.seed)
    result = get_strategy(inputs.config.strategy)(inputs)
    # A model at rest is contiguous again (training and extraction ran NHWC where
    # faster), so the fitted model and the same model saved and loaded compute
    # bit-identical predictions.
    result.model.to(memory_format=torch.contiguous_format).eval()
    cache_stats = vars(features.stats).copy()  # what training used, before evaluation
    evaluations = _evaluate_splits(inputs, result)
    calibration, trust = _after_training(inputs, result, evaluations)
    return TrainResult(
        model=result.model,
        config=inputs.config,
        requested_strategy=config.strategy,
        plan=inputs.plan,
        phases=result.phases,
        history=list(history.rows),
        frozen_base=result.frozen_base,
        evaluations=evaluations,
        feature_cache=cache_stats,
        selection=result.selection,
        calibration=calibration,
        trust=trust,
    )


def _after_training(inputs: TrainingInputs, result, evaluations: dict) -> tuple[dict, object]:
    """Test-time augmentation (kept only if it improves validation), then calibration
    on the held-out probabilities, then the trust data (the OOD score's statistics and
    the held-out scores its threshold and the prediction sets come from; rank 0)."""
    pooled = bool((result.selection or {}).get("validation_pooled"))
    collective = inputs.runtime.collective
    if collective.is_main:
        result.model.tta_record = decide_tta(inputs, result, evaluations, pooled=pooled)
    _share_tta(result.model, collective)
    calibration = calibrate(result.model, evaluations, collective, pooled=pooled)
    trust = None
    if collective.is_main:
        trust = fit_trust(inputs, result, evaluations, pooled=pooled)
        result.model.trust = trust  # saved with the run, used by its predictors
    return calibration, trust


def calibrate(
    model: TransferModel, evaluations: dict, collective=None, *, pooled: bool = False
) -> dict:
    """Temperature scaling after training: fit T on the validation split's held-out
    probabilities, set it on the model's head, and rescale the probabilities of
    ``evaluations`` in place to what the calibrated model predicts (accuracy cannot
    change; the loss stays the training objective's, as in the history). Rank 0
    fits; under torchrun every process gets its temperature. Returns the record for
    metrics.json.

    ``pooled``: the validation images were trained on (the cross-validated head on
    small data), so their probabilities come from the fold models, which saw less
    data and are less sure than the model refitted on all of it: a temperature
    fitted on them over-sharpens that model (on the demo data, T = 0.72 raised the
    test ECE from 0.064 to 0.073). No temperature is fitted then."""
    fitted = None
    if collective is None or collective.is_main:
        val = evaluations.get("val")
        if pooled:
            fitted = TemperatureFit(1.0, 0, POOLED_REASON)
        elif val is None:
            fitted = fit_temperature(np.zeros((0, 0)), np.zeros(0))
        else:
            fitted = fit_temperature(log_probabilities(val.probabilities), val.labels)
        log.info(
            "calibration: temperature %.3f%s",
            fitted.temperature,
            f" ({fitted.reason})" if fitted.reason else f" from {fitted.images} held-out images",
        )
        fitted = vars(fitted)
    if collective is not None and collective.active:
        fitted = collective.broadcast_json(fitted)
    model.head.set_temperature(fitted["temperature"])
    for ev in evaluations.values():
        _rescale_evaluation(ev, fitted["temperature"])
    return fitted


def _share_tta(model: TransferModel, collective) -> None:
    """Under torchrun every process gets rank 0's test-time augmentation decision."""
    if collective is not None and collective.active:
        model.set_tta(
            bool(collective.broadcast_json(bool(model.tta) if collective.is_main else None))
        )


POOLED_REASON = (
    "the validation images were trained on (cross-validated head): their out-of-fold "
    "predictions come from other models than the final one"
)


def _rescale_evaluation(ev, temperature: float) -> None:
    if temperature == 1.0 or ev.probabilities is None:
        return
    probs = rescale(ev.probabilities.double().numpy(), temperature)
    ev.probabilities = torch.from_numpy(probs).to(ev.probabilities.dtype)


def check_settings(backbone, config: FitConfig, compute=None):
    """Judge the settings that only the backbone can judge, in milliseconds and
    before any image goes through it, so a mistake costs no feature extraction:
    ``cut`` names one of its layers, ``unfreeze`` top:N has N blocks to take, the
    image size is one it takes (``compute``: the precision to try it in). Returns
    the backbone, cut at ``config.cut`` if it is cut elsewhere. Raises
    :class:`InputError` naming the setting, the value and what is allowed."""
    if config.cut is not None and config.cut != backbone.cut:
        backbone = recut_backbone(backbone, config.cut)  # an unknown layer is refused
    top = config.unfreeze_top()
    blocks = len(backbone.blocks)
    if top is not None and top > blocks:
        allowed = f"top:1 to top:{blocks}, or all" if blocks else "all"
        raise InputError(
            f"--unfreeze {config.unfreeze}: {backbone.name} cut at {backbone.cut} has "
            f"{blocks} block{'s' * (blocks != 1)}; use {allowed} "
            f"(`transferkit inspect {backbone.spec}` lists them)"
        )
    if config.image_size is not None and config.image_size != backbone.input_size[1]:
        _check_image_size(backbone, config, compute)
    return backbone


def _check_image_size(backbone, config: FitConfig, compute) -> None:
    """One blank image at ``config.image_size`` through the backbone (milliseconds):
    a backbone that takes only its own size, or a head that flattens maps sized
    for it, fails here instead of after the feature extraction."""
    size, own = config.image_size, backbone.input_size[1]
    fix = f"use {own} (its own size) or leave --image-size out"
    if getattr(backbone, "fixed_input_size", False):
        raise InputError(f"--image-size {size}: {backbone.name} takes only {own} px images; {fix}")
    try:
        shape = probe_feature_shape(backbone, size, compute)
    except Exception as exc:  # any failure of the model at this size
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"--image-size {size}: {backbone.name} cannot take {size} px images ({first}); {fix}"
        ) from None
    if config.head.pooling == "flatten" and shape != tuple(backbone.feature_shape):
        raise InputError(
            f"--pooling flatten with --image-size {size}: the flattened features at "
            f"{size} px have shape {shape}, not the {tuple(backbone.feature_shape)} the head "
            f"is sized for at {own} px; use --pooling avg or max, or {fix}"
        )


@torch.no_grad()
def probe_feature_shape(backbone, size: int, compute=None) -> tuple[int, ...]:
    """The per-image feature shape of ``backbone`` at ``size`` px, from one blank
    image, in eval mode (BatchNorm statistics untouched), under ``compute``'s
    autocast when given (the precision extraction will use)."""
    param = next(backbone.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, backbone.input_size[0], size, size, device=device)
    was = backbone.training
    backbone.eval()
    try:
        with compute.autocast() if compute is not None else contextlib.nullcontext():
            return tuple(backbone.forward_features(x).shape[1:])
    finally:
        backbone.train(was)


def _planned_inputs(backbone, splits, config, features, runtime, callbacks) -> TrainingInputs:
    """Plan (measuring if needed), cut the backbone as planned, and seed the cache
    with what the measuring pass extracted."""
    advice = AdviceStore(features.root / "advice", writable=features.store.can_write)
    torch.manual_seed(config.seed)
    plan, measurement = make_plan(backbone, splits, config, advice=advice, compute=runtime.compute)
    if plan.cut != backbone.cut:
        backbone = recut_backbone(backbone, plan.cut)
    _log_plan(plan, backbone)
    inputs = TrainingInputs(
        backbone=backbone,
        splits=splits,
        config=plan.resolve(config),
        plan=plan,
        runtime=runtime,
        features=features,
        callbacks=callbacks,
    )
    _seed_cache(inputs, measurement)
    return inputs


def _log_plan(plan, backbone) -> None:
    """What will be trained, as soon as it is fixed: the strategy and the cut
    actually used (the advisor may have moved the cut), the image size, what
    fine-tuning unfreezes."""
    size = plan.image_size or backbone.input_size[1]
    unfreeze = f", unfreeze {plan.unfreeze}" if plan.strategy == "fine-tune" else ""
    log.info(
        "plan: %s, %s cut at %s, %d px%s",
        plan.strategy,
        backbone.name,
        backbone.cut,
        size,
        unfreeze,
    )


def _evaluate_splits(inputs: TrainingInputs, result) -> dict:
    """The final model on the validation and test splits (rank 0 alone)."""
    if not inputs.runtime.collective.is_main:
        return {}
    return {
        split: result.evaluations.get(split)
        or evaluate_split(inputs, result, getattr(inputs.splits, split), split)
        for split in ("val", "test")
        if getattr(inputs.splits, split)
    }


def _seed_cache(inputs: TrainingInputs, measurement) -> None:
    """The measuring pass doubles as feature extraction: its features at the chosen
    cut go into the cache, so the backbone does not run over the same images twice."""
    pooling = representation_for(inputs.config.head.pooling)
    if measurement is None or pooling != "avg" or inputs.plan.cut not in measurement.features:
        return
    inputs.features.put(
        inputs.backbone,
        [e.digest for e in measurement.examples],
        measurement.features[inputs.plan.cut],
        extraction(inputs, "advisor"),
    )


def _check_processes_agree(inputs: TrainingInputs) -> None:
    """Every process must train the same thing. Each one planned on its own; should
    they ever decide differently, stop with a message rather than hang in a
    collective that only some processes reach."""
    c = inputs.runtime.collective
    if not c.active:
        return
    cfg = inputs.config
    mine = [cfg.strategy, inputs.backbone.cut, cfg.image_size, cfg.unfreeze]
    mine.append(len(inputs.splits.train))
    main = c.broadcast_json(mine if c.is_main else None)
    if not c.all_true(main == mine):
        raise TransferkitError(
            f"torchrun processes disagree on what to train: rank 0 has {main}, rank "
            f"{c.rank} has {mine} (strategy, cut, image size, unfreeze, train images)"
        )
