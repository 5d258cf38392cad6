"""One entry point for every kind of backbone: ``create_backbone(spec)``.

A spec is a built-in name, a timm name (optionally ``timm:NAME``), a path to a local
checkpoint, or a ``torch.nn.Module``; with the ``keras`` extra also ``keras:NAME``
(``keras.applications``), a saved ``.keras``/``.h5`` model, or a Keras model object.
Unknown names get a one-line error with the closest matches.
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from ..errors import InputError, did_you_mean
from .base import Backbone
from .builtin import BUILTIN, DEFAULT_BACKBONE, create_builtin_backbone
from .checkpoint import create_checkpoint_backbone, create_module_backbone, looks_like_checkpoint
from .keras_loader import create_keras_backbone, is_keras_model, is_keras_spec
from .timm_loader import create_timm_backbone, is_timm_name

NO_WEIGHTS = ("none", "random", "scratch")


def list_backbones(pattern: str = "", include_timm: bool = True) -> list[str]:
    """Built-in names first, then timm's architectures (``pattern`` filters by substring)."""
    names = list(BUILTIN)
    if include_timm:
        names += timm.list_models()
    return [n for n in names if pattern.lower() in n.lower()]


def create_backbone(
    spec: str | nn.Module = DEFAULT_BACKBONE,
    *,
    weights: str | Path | None = None,
    cut: str | None = None,
    pretrained: bool = True,
) -> Backbone:
    """Build a :class:`Backbone` from a spec.

    Args:
        spec: built-in name (``efficientnet_lite0``), timm name (``resnet18`` or
            ``timm:resnet18``), checkpoint path, or a torch module; Keras:
            ``keras:InceptionV3[,size=150]``, ``model.keras``/``model.h5`` or a Keras
            model (see :mod:`transferkit.backbones.keras_loader`).
        weights: a local weights file for a named architecture, or ``"none"`` for
            random initialisation. Without it, built-ins use their packaged weights and
            timm names download from the hub (a clear error offline).
        cut: layer to cut at (see ``Backbone.cut_points``); default: the full output.
        pretrained: ``False`` builds the architecture with random weights.

    Example:
        >>> bb = create_backbone("efficientnet_lite0", cut="blocks.4")  # doctest: +SKIP
        >>> bb.num_features  # doctest: +SKIP
        112
    """
    if isinstance(weights, str) and weights.lower() in NO_WEIGHTS:
        weights, pretrained = None, False
    if is_keras_model(spec):
        return create_keras_backbone(spec, weights=weights, cut=cut)
    if isinstance(spec, nn.Module):
        return create_module_backbone(spec, cut=cut)
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"backbone spec must be a name, a path or a torch module, got {spec!r}")
    if is_keras_spec(spec):
        return create_keras_backbone(spec, weights=weights, pretrained=pretrained, cut=cut)
    if spec in BUILTIN:
        if weights is not None:
            return create_timm_backbone(BUILTIN[spec][0], weights=weights, cut=cut, spec=spec)
        return create_builtin_backbone(spec, pretrained=pretrained, cut=cut)
    if spec.startswith("timm:") or is_timm_name(spec):
        return create_timm_backbone(spec, pretrained=pretrained, weights=weights, cut=cut)
    if looks_like_checkpoint(spec):
        return create_checkpoint_backbone(spec, cut=cut)
    raise InputError(
        f"unknown backbone {spec!r}: not a built-in, not a timm model and no such file"
        f"{did_you_mean(spec, list_backbones())} "
        f" (built-in: {', '.join(BUILTIN)}; or any name in timm.list_models())"
    )
