"""Any ``torch.nn.Module`` from Python as a backbone, and what timm modules share.

A module's output (or a cut layer's) is the feature; a timm module (one with
``forward_features`` and ``reset_classifier``) gives its feature map and its own
preprocessing (``pretrained_cfg``). A run trained on a module stores no code, so
loading it needs the same module architecture again.
"""

from __future__ import annotations

import timm.data
import torch
from torch import nn

from ..errors import InputError
from .base import IMAGENET_DATA_CONFIG, Backbone, recut_module_backbone
from .loader import Loader


def timm_data_config(model: nn.Module) -> dict:
    return dict(timm.data.resolve_data_config({}, model=model))


def timm_forward_features(model: nn.Module, x):
    """timm's feature forward (a named function, so backbones stay picklable)."""
    return model.forward_features(x)


def create_module_backbone(
    module: nn.Module,
    *,
    cut: str | None = None,
    name: str | None = None,
    data_config: dict | None = None,
) -> Backbone:
    """Any ``torch.nn.Module`` from Python. Its output (or a cut layer's) is the feature.

    ``data_config`` should give the preprocessing it was trained with; ImageNet's
    mean/std at 224 px is assumed otherwise. A :class:`Backbone` given with another
    ``cut`` is re-cut (:func:`~.base.recut_module_backbone`: it keeps its name, spec and
    loader, and must not be used afterwards).
    """
    if isinstance(module, Backbone):
        return module if cut is None else recut_module_backbone(module, cut)
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise InputError(
            f"expected a torch.nn.Module (not TorchScript), got {type(module).__name__}"
        )
    timm_like = hasattr(module, "forward_features") and hasattr(module, "reset_classifier")
    defaults = timm_data_config(module) if timm_like else IMAGENET_DATA_CONFIG
    if timm_like:
        module.reset_classifier(0)
    return Backbone(
        module,
        name=name or type(module).__name__,
        spec="<module>",
        data_config=dict(defaults, **(data_config or {})),
        features_fn=timm_forward_features if timm_like else None,
        cut=cut,
        source="timm module" if timm_like else "module",
    )


def rebuild_module_backbone(record: dict, module: nn.Module | None = None) -> Backbone:
    """A run's backbone around the module the user passes again (its weights are
    replaced by the run's). Without one there is nothing to rebuild from: a module's
    code is not stored in a run."""
    if module is None:
        raise InputError(
            f"this run's backbone {record.get('name')!r} was a Python module; "
            "load it with load_run(path, backbone=<the same module architecture>)"
        )
    return create_module_backbone(
        module,
        cut=record.get("cut"),
        name=record.get("name"),
        data_config=record.get("data_config"),
    )


def _is_module(spec: object) -> bool:
    return isinstance(spec, nn.Module)


def _create_module(spec: nn.Module, *, weights, cut, pretrained) -> Backbone:
    return create_module_backbone(spec, cut=cut)


MODULE_LOADER = Loader("module", _is_module, _create_module, rebuild_module_backbone)
