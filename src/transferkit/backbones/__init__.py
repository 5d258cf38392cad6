"""Backbones: pretrained models, without their classifier, cut at a chosen layer."""

from .base import Backbone, Block, weights_digest
from .builtin import BUILTIN, DEFAULT_BACKBONE
from .loader import Loader
from .registry import (
    create_backbone,
    list_backbones,
    rebuild_backbone,
    recut_backbone,
    register_loader,
)

__all__ = [
    "BUILTIN",
    "DEFAULT_BACKBONE",
    "Backbone",
    "Block",
    "Loader",
    "create_backbone",
    "list_backbones",
    "rebuild_backbone",
    "recut_backbone",
    "register_loader",
    "weights_digest",
]
