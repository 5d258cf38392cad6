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

from torch import nn

from ..errors import InputError
from .base import Backbone
from .builtin import BUILTIN, create_builtin_model
from .loader import Loader, is_spec_text
from .module import rebuild_module_backbone, timm_data_config, timm_forward_features
from .timm_loader import create_timm_model, is_timm_name
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
    if not sidecar.is_file():
        return None
    try:
        cfg = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        problem = f"cannot be read as JSON ({type(exc).__name__})"
        raise _bad_config(sidecar, path, problem) from None
    if not isinstance(cfg, dict):
        raise _bad_config(sidecar, path, "is not a JSON object")
    arch = cfg.get("architecture") or cfg.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise _bad_config(sidecar, path, f"gives the architecture as {arch!r}, not a name")
    return arch


def _bad_config(sidecar: Path, path: Path, problem: str) -> InputError:
    return InputError(
        f"{str(sidecar)!r} beside {str(path)!r} {problem}; fix it, or name the "
        f"architecture: --backbone ARCH --weights {path}"
    )


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
    model = _random_model(arch, str(path))
    load_into(model, state, str(path))
    return _checkpoint_backbone(model, arch, str(path), cut, f"checkpoint {path.name}")


def rebuild_checkpoint_backbone(record: dict, module: nn.Module | None = None) -> Backbone:
    """A run's checkpoint backbone from the architecture the run recorded, with random
    weights: the run's file fills them, so the original checkpoint is not needed. A
    ``module`` the user passes is used instead."""
    if module is not None:
        return rebuild_module_backbone(record, module)
    model = _random_model(record["name"], record["spec"])
    source = record.get("source") or f"checkpoint {Path(record['spec']).name}"
    return _checkpoint_backbone(model, record["name"], record["spec"], record.get("cut"), source)


def _random_model(arch: str, path: str) -> nn.Module:
    """The architecture a checkpoint names (built-in or timm), randomly initialised."""
    if arch in BUILTIN:
        return create_builtin_model(arch, pretrained=False)
    if is_timm_name(arch):
        return create_timm_model(arch, pretrained=False)[0]
    raise InputError(f"checkpoint {path!r} names unknown architecture {arch!r}")


def _checkpoint_backbone(
    model: nn.Module, arch: str, spec: str, cut: str | None, source: str
) -> Backbone:
    data_config = timm_data_config(model)
    model.reset_classifier(0)
    backbone = Backbone(
        model,
        name=arch,
        spec=spec,
        data_config=data_config,
        features_fn=timm_forward_features,
        cut=cut,
        source=source,
    )
    backbone.loader = CHECKPOINT_LOADER.name
    return backbone


def _is_checkpoint_spec(spec: object) -> bool:
    return is_spec_text(spec) and looks_like_checkpoint(spec)


def _create_checkpoint(spec: str, *, weights, cut, pretrained) -> Backbone:
    return create_checkpoint_backbone(spec, cut=cut)


CHECKPOINT_LOADER = Loader(
    "checkpoint", _is_checkpoint_spec, _create_checkpoint, rebuild_checkpoint_backbone
)
