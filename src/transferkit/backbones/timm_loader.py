"""timm models as backbones: hub weights when online, a local file otherwise.

The classifier is removed (``reset_classifier(0)``) and the features come from
timm's ``forward_features``; preprocessing comes from the model's own
``pretrained_cfg``, never from constants of ours.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

import timm
import timm.data
from torch import nn

from ..errors import InputError, WeightsUnavailableError, did_you_mean
from .base import Backbone
from .loader import Loader, is_spec_text
from .module import rebuild_module_backbone, timm_data_config, timm_forward_features
from .weights import load_into, read_weight_file

HUB_HOST = "huggingface.co"


def is_timm_name(name: str) -> bool:
    return timm.is_model(name.removeprefix("timm:"))


def create_timm_model(
    name: str, pretrained: bool = True, weights: str | Path | None = None
) -> tuple[nn.Module, str]:
    """Build timm's ``name`` with weights; return ``(model, weights_origin)``."""
    name = name.removeprefix("timm:")
    if not timm.is_model(name):
        raise InputError(f"unknown timm model {name!r}{did_you_mean(name, timm.list_models())}")
    if weights is not None:
        model = timm.create_model(name, pretrained=False)
        state, _ = read_weight_file(weights)
        load_into(model, state, str(weights))
        return model, f"file:{weights}"
    if not pretrained:
        return timm.create_model(name, pretrained=False), "random"
    return _from_hub(name), "hub"


@contextmanager
def _hub_cache_only():
    """Make huggingface_hub answer from its local cache alone (it reads the env var
    only at import time, so the constant is what must change)."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def _from_hub(name: str) -> nn.Module:
    # The local hub cache first, so a machine that once downloaded works offline.
    try:
        with _hub_cache_only():
            return timm.create_model(name, pretrained=True)
    except Exception:
        pass
    hint = (
        f"pass a local weights file (--weights PATH to a .safetensors/.pth of {name}), "
        "or --weights none for random initialisation"
    )
    if not hub_reachable():
        raise WeightsUnavailableError(
            f"pretrained weights for {name!r} are not cached and {HUB_HOST} cannot be "
            f"reached (offline?): {hint}"
        )
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"downloading pretrained weights for {name!r} failed ({type(exc).__name__}): {hint}"
        ) from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick DNS + TCP probe, so offline machines fail in seconds, not after retries."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def create_timm_backbone(
    name: str,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    cut: str | None = None,
    spec: str | None = None,
) -> Backbone:
    model, origin = create_timm_model(name, pretrained=pretrained, weights=weights)
    name = name.removeprefix("timm:")
    data_config = timm_data_config(model)
    model.reset_classifier(0)
    backbone = Backbone(
        model,
        name=name,
        spec=spec or name,
        data_config=data_config,
        features_fn=timm_forward_features,
        cut=cut,
        source=f"timm ({origin})",
    )
    backbone.loader = TIMM_LOADER.name
    return backbone


def rebuild_timm_backbone(record: dict, module: nn.Module | None = None) -> Backbone:
    """A run's timm backbone, with random weights (the run's file fills them).

    The architecture is the run's ``architecture`` (timm's ``pretrained_cfg``) or
    else its name; no download happens. A ``module`` the user passes is used instead,
    as loading a run with ``backbone=`` always allowed.
    """
    if module is not None:
        return rebuild_module_backbone(record, module)
    arch = record.get("architecture") or record["name"]
    return create_timm_backbone(
        arch, pretrained=False, cut=record.get("cut"), spec=record.get("spec")
    )


def _is_timm_spec(spec: object) -> bool:
    return is_spec_text(spec) and (spec.startswith("timm:") or is_timm_name(spec))


def _create(spec: str, *, weights, cut, pretrained) -> Backbone:
    return create_timm_backbone(spec, pretrained=pretrained, weights=weights, cut=cut)


TIMM_LOADER = Loader("timm", _is_timm_spec, _create, rebuild_timm_backbone)
