"""Local checkpoints and in-memory torch modules as backbones.

A weights-only file does not say which architecture it belongs to; we read that from
the file itself (safetensors metadata ``architecture``, a ``config.json`` beside it as
timm's hub layout has, or an ``arch`` entry in a ``.pth`` dict). TorchScript archives
are refused with a clear message: compiled graphs cannot be cut or frozen per layer.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError
from .base import IMAGENET_DATA_CONFIG, Backbone
from .builtin import BUILTIN, create_builtin_model
from .timm_loader import create_timm_model, is_timm_name, timm_data_config, timm_forward_features
from .weights import WEIGHT_SUFFIXES, load_into, read_weight_file


def looks_like_checkpoint(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in WEIGHT_SUFFIXES or path.is_file()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/code/") or "/code/" in n for n in zf.namelist())


def _architecture_of(path: Path, meta: dict[str, str]) -> str | None:
    if meta.get("architecture"):
        return meta["architecture"]
    sidecar = path.with_name("config.json")
    if sidecar.is_file():
        try:
            cfg = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return cfg.get("architecture") or cfg.get("arch")
    return None


def create_checkpoint_backbone(path: str | Path, *, cut: str | None = None) -> Backbone:
    """A backbone from a local file: TorchScript archive or weights + known architecture."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix in (".pt", ".pth") and _is_torchscript(path):
        raise InputError(
            f"{str(path)!r} is a TorchScript archive: its layers cannot be cut, frozen or "
            f"hooked one by one; pass its weights instead (--backbone ARCH --weights FILE)"
        )
    state, meta = read_weight_file(path)
    arch = _architecture_of(path, meta)
    if arch is None:
        raise InputError(
            f"checkpoint {str(path)!r} holds weights but does not say its architecture; "
            f"name it: --backbone ARCH --weights {path} (ARCH a timm or built-in name)"
        )
    if arch in BUILTIN:
        model = create_builtin_model(arch, pretrained=False)
    elif is_timm_name(arch):
        model, _ = create_timm_model(arch, pretrained=False)
    else:
        raise InputError(f"checkpoint {str(path)!r} names unknown architecture {arch!r}")
    load_into(model, state, str(path))
    data_config = timm_data_config(model)
    model.reset_classifier(0)
    return Backbone(
        model,
        name=arch,
        spec=str(path),
        data_config=data_config,
        features_fn=timm_forward_features,
        cut=cut,
        source=f"checkpoint {path.name}",
    )


def create_module_backbone(
    module: nn.Module,
    *,
    cut: str | None = None,
    name: str | None = None,
    data_config: dict | None = None,
) -> Backbone:
    """Any ``torch.nn.Module`` from Python. Its output (or a cut layer's) is the feature.

    ``data_config`` should give the preprocessing it was trained with; ImageNet's
    mean/std at 224 px is assumed otherwise.
    """
    if isinstance(module, Backbone):
        if cut is None or cut == module.cut:
            return module
        module = module.model
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise InputError(
            f"expected a torch.nn.Module (not TorchScript), got {type(module).__name__}"
        )
    config = dict(IMAGENET_DATA_CONFIG, **(data_config or {}))
    if hasattr(module, "forward_features") and hasattr(module, "reset_classifier"):
        config = dict(timm_data_config(module), **(data_config or {}))
        module.reset_classifier(0)
        return Backbone(
            module,
            name=name or type(module).__name__,
            spec="<module>",
            data_config=config,
            features_fn=timm_forward_features,
            cut=cut,
            source="timm module",
        )
    return Backbone(
        module,
        name=name or type(module).__name__,
        spec="<module>",
        data_config=config,
        cut=cut,
        source="module",
    )
