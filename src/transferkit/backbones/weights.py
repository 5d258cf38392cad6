"""Reading weight files safely and fitting them onto an architecture.

No pickle: ``.safetensors`` via safetensors, ``.pt``/``.pth``/``.bin`` via
``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers. A file written with another library's key names (e.g.
EfficientNet-PyTorch) is mapped by order when every tensor's shape matches in order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


@dataclass
class LoadReport:
    """How a file's tensors were matched onto the model."""

    path: str
    matched_by: str  # "name" or "order"
    loaded: int
    skipped: list[str] = field(default_factory=list)  # e.g. a classifier of another size


def read_weight_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return ``(state_dict, metadata)`` from a weights file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise InputError(
            f"weights file {str(path)!r}: unknown type {path.suffix!r}; "
            f"expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, truncated zip...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read weights file {str(path)!r}: {first}") from None
    if path.suffix != ".safetensors":
        return _unwrap(obj, path)
    if not state:  # a header alone (perhaps with metadata) is a valid safetensors file
        raise InputError(f"weights file {str(path)!r} holds no tensors")
    return state, meta


def _unwrap(obj, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    meta: dict[str, str] = {}
    if isinstance(obj, dict):
        for key in ("arch", "architecture"):
            if isinstance(obj.get(key), str):
                meta["architecture"] = obj[key]
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise InputError(f"weights file {str(path)!r} holds no state dict of tensors")
    if not all(isinstance(k, str) for k in obj):
        raise InputError(
            f"weights file {str(path)!r} holds no state dict of tensors (keys must be tensor names)"
        )
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}
    return state, meta


def load_into(
    model: nn.Module, state: dict[str, torch.Tensor], path: str = "<memory>"
) -> LoadReport:
    """Load ``state`` into ``model`` by name, or by order when names differ but every
    shape lines up. Tensors whose shape differs only in a classifier are skipped.

    Raises:
        InputError: ``state`` is empty, does not fit the architecture, or holds another
            kind of number (integers, booleans, complex) where the model has floats.
    """
    if not state:
        raise InputError(f"weights file {path!r} holds no tensors")
    target = model.state_dict()
    same_names = set(state) & set(target)
    if len(same_names) >= 0.9 * len(target):
        return _load_by_name(model, state, target, path)
    src, dst = list(state.items()), list(target.items())
    if len(src) == len(dst) and all(
        a.shape == b.shape for (_, a), (_, b) in zip(src, dst, strict=True)
    ):
        _check_kinds([(k, a, b) for (k, a), (_, b) in zip(src, dst, strict=True)], path)
        model.load_state_dict({k: v for (k, _), (_, v) in zip(dst, src, strict=True)}, strict=True)
        log.debug("mapped %d tensors of %s onto the model by order", len(src), path)
        return LoadReport(path, "order", len(src))
    raise InputError(
        f"weights file {path!r} does not fit this architecture: {len(src)} tensors in the "
        f"file vs {len(dst)} in the model and names differ (e.g. {src[0][0]!r} vs {dst[0][0]!r})"
    )


def _load_by_name(
    model: nn.Module, state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: str
) -> LoadReport:
    same_names = set(state) & set(target)
    skipped = [k for k in same_names if state[k].shape != target[k].shape]
    missing = [k for k in target if k not in state]
    if len(skipped) + len(missing) > 4:
        raise InputError(
            f"weights file {path!r} does not fit this architecture: "
            f"{len(missing)} missing and {len(skipped)} mismatched tensors "
            f"(first: {(missing + skipped)[0]})"
        )
    filtered = {k: v for k, v in state.items() if k in target and k not in skipped}
    _check_kinds([(k, filtered[k], v) for k, v in target.items() if k in filtered], path)
    model.load_state_dict(filtered, strict=False)
    return LoadReport(path, "name", len(filtered), sorted(skipped + missing))


def _kind(t: torch.Tensor) -> str:
    if t.is_complex():
        return "complex"
    if t.is_floating_point():
        return "float"
    return "bool" if t.dtype == torch.bool else "int"


def _check_kinds(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], path: str) -> None:
    """Refuse a tensor that holds another kind of number than the model's (integers for
    floats, say): copying would cast it silently into weights that mean nothing. Another
    float precision (float16, bfloat16) is fine: it is cast."""
    for name, got, want in pairs:
        if _kind(got) != _kind(want):
            raise InputError(
                f"weights file {path!r}: tensor {name!r} holds {got.dtype} values where "
                f"the model has {want.dtype}; these are not weights for it"
            )
