"""Backbones: pretrained models cut at a chosen layer (DESIGN §2)."""

from .base import Backbone, Block, weights_digest
from .builtin import BUILTIN, DEFAULT_BACKBONE
from .registry import create_backbone, list_backbones

__all__ = [
    "BUILTIN",
    "DEFAULT_BACKBONE",
    "Backbone",
    "Block",
    "create_backbone",
    "list_backbones",
    "weights_digest",
]
