"""The ``Backbone`` contract: the one thing the rest of transferkit sees of a model.

A Backbone wraps any torch module and adds what transfer learning needs:
``forward_features`` at a chosen cut, ``num_features``, ``data_config`` (the
preprocessing its weights were trained with), named ``blocks`` in input-to-output
order (whole units, so fine-tuning unfreezes whole blocks, never half of one) and the
``cut_points`` a user may cut at. Everything after the cut is removed, so it neither
runs nor counts as a weight.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError, did_you_mean
from .introspect import Trace, trace_modules

IMAGENET_DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)


_BODY_NAMES = {"blocks", "stages", "layers", "features", "encoder", "body"}


class _CutReached(Exception):
    """Raised by the cut hook to stop the forward pass once the cut's output exists."""


CUT_JOIN = "+"


def cut_parts(cut: str) -> list[str]:
    """The layers of a cut: ``"blocks.4+blocks.5"`` is two (a joined cut), most one."""
    return [p.strip() for p in cut.split(CUT_JOIN)]


def join_cuts(cuts) -> str:
    """One cut name for the features of several layers side by side."""
    return CUT_JOIN.join(cuts)


def pooled(x: torch.Tensor) -> torch.Tensor:
    """(B, C) from (B, C, H, W) maps (spatial mean), (B, N, C) tokens (token mean) or
    (B, C) vectors (as they are)."""
    if x.dim() == 4:
        return x.mean((2, 3))
    if x.dim() == 3:
        return x.mean(1)
    return x


class _Hooks:
    """Several forward-hook handles removed as one."""

    def __init__(self, handles):
        self.handles = list(handles)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class ModuleGroup:
    """Several modules (and loose parameters) that form one block, e.g. a stem conv
    and the BatchNorm after it: they are frozen and unfrozen together, never split."""

    def __init__(self, modules: list[nn.Module], extra: list[nn.Parameter] | None = None):
        self._modules_list = modules
        self._extra = extra or []

    def modules(self) -> Iterator[nn.Module]:
        for m in self._modules_list:
            yield from m.modules()

    def parameters(self) -> Iterator[nn.Parameter]:
        for m in self._modules_list:
            yield from m.parameters()
        yield from self._extra


@dataclass
class Block:
    """A named unit of the base. ``modules`` are dotted names inside the wrapped model;
    cutting at the block means taking the output of its last module."""

    name: str
    modules: tuple[str, ...]


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes, bytes): identifies weights
    so caches and saved runs can tell one set of weights from another."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Backbone(nn.Module):
    """A pretrained model cut at a named layer. See the module docstring.

    Args:
        model: the wrapped network.
        name: a human-readable name ("efficientnet_lite0", "resnet18", ...).
        spec: how to rebuild it (what ``create_backbone`` accepted), for run configs.
        data_config: preprocessing the weights were trained with; images are always
            prepared from it, never from constants of ours.
        features_fn: the full feature forward, e.g. timm's ``forward_features``;
            defaults to calling the model.
        cut: a cut point or any module name that runs; ``None`` keeps the full output.
            Several joined by ``+`` (``"blocks.4+blocks.5"``) give each one's
            average-pooled features side by side, one vector per image; the base
            then ends at the deepest of them.
        digest: the weights digest, if already known.

    ``loader`` names the registry entry that rebuilds and re-cuts it (see
    :mod:`.registry`); each loader sets it on what it makes. A Backbone built by hand
    around a module is a ``"module"`` backbone: a saved run of it is reloaded by
    passing the same module architecture again.
    """

    loader: str = "module"
    joinable_cuts = True  # a cut may join several layers ("blocks.4+blocks.5")

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        spec: str,
        data_config: dict | None = None,
        features_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        cut: str | None = None,
        digest: str | None = None,
        source: str = "module",
    ):
        super().__init__()
        self.model = model
        self.name = name
        self.spec = spec
        self.source = source
        self.data_config = dict(data_config or IMAGENET_DATA_CONFIG)
        self._features_fn = features_fn or (lambda m, x: m(x))
        self.weights_digest = digest or weights_digest(model)
        self._cut_hook = None
        self._cut_out: list[torch.Tensor] = []
        self._taps: list[str] = []  # a joined cut's layers, input to output
        trace, full_output_shape = self._trace()
        self.all_blocks = _discover_blocks(model, trace)
        self.cut = None
        self._full_trace = trace
        if cut is not None and cut != self.cut_points[-1]:
            self._apply_cut(cut, trace)
            shape = self._cut_shape(trace)
        else:
            self.cut = self.cut_points[-1] if self.cut_points else None
            shape = full_output_shape
        self.feature_shape: tuple[int, ...] = tuple(shape)
        self.num_features = int(shape[-1] if len(shape) == 2 else shape[0])

    # ------------------------------------------------------------------ contract
    @property
    def cut_points(self) -> list[str]:
        """Names a user may cut at, input to output; the last is the full output."""
        return [b.name for b in self.all_blocks]

    @property
    def blocks(self) -> list[tuple[str, ModuleGroup]]:
        """Whole blocks up to the cut, input to output, as ``(name, group)``."""
        modules = dict(self.model.named_modules())
        out = []
        for i, b in enumerate(self._kept_blocks()):
            extra = list(self.model.parameters(recurse=False)) if i == 0 else None
            out.append((b.name, ModuleGroup([modules[m] for m in b.modules], extra)))
        return out

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features at the cut: (B, C, H, W) maps, (B, N, C) tokens or (B, C) vectors."""
        if self._cut_hook is None:
            return self._features_fn(self.model, x)
        self._cut_out.clear()
        with contextlib.suppress(_CutReached):
            self._features_fn(self.model, x)
        if len(self._cut_out) < max(1, len(self._taps)):
            raise RuntimeError(f"cut layer {self.cut!r} did not run during the forward pass")
        if self._taps:
            outputs = [pooled(o) for o in self._cut_out]
            self._cut_out.clear()
            return torch.cat(outputs, dim=1)
        return self._cut_out.pop()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def describe(self) -> dict:
        """Facts about this backbone, for configs and ``inspect``."""
        return {
            "name": self.name,
            "spec": self.spec,
            "source": self.source,
            "loader": self.loader,
            "cut": self.cut,
            "cut_points": self.cut_points,
            "blocks": [name for name, _ in self.blocks],
            "num_features": self.num_features,
            "feature_shape": list(self.feature_shape),
            "data_config": _jsonable(self.data_config),
            "weights_digest": self.weights_digest,
        }

    # ------------------------------------------------------------------ internals
    def _trace(self) -> tuple[Trace, tuple[int, ...]]:
        """One forward at the default input: execution order, shapes, output shape."""
        x = torch.zeros(1, *self.input_size)
        outputs = []

        def run(inp):
            outputs.append(self.forward_features(inp))

        trace = trace_modules(self.model, run, x)
        return trace, tuple(outputs[0].shape[1:])

    def _kept_blocks(self) -> list[Block]:
        if self._cut_hook is None:
            return self.all_blocks
        runs = self._full_trace.runs
        cut_end = runs[self._cut_module_name].end
        return [b for b in self.all_blocks if runs[b.modules[-1]].end <= cut_end]

    def _cut_module(self, cut: str, trace: Trace) -> str:
        """The module whose output is the cut ``cut`` (a block's last module)."""
        blocks = {b.name: b for b in self.all_blocks}
        if cut in blocks:
            return blocks[cut].modules[-1]
        if cut in trace.runs:
            return cut
        raise InputError(
            f"cannot cut {self.name} at {cut!r}: no such layer runs in it"
            f"{did_you_mean(cut, list(blocks) + list(trace.runs))}"
            f" (cut points: {', '.join(self.cut_points)})"
        )

    def _cut_shape(self, trace: Trace) -> tuple[int, ...]:
        if not self._taps:
            return tuple(trace.runs[self._cut_module_name].output_shape)
        shapes = [trace.runs[m].output_shape for m in self._taps]
        return (sum(int(s[-1] if len(s) == 2 else s[0]) for s in shapes),)

    def _apply_cut(self, cut: str, trace: Trace) -> None:
        parts = cut_parts(cut)
        names = [self._cut_module(p, trace) for p in parts]
        if len(set(names)) < len(names):
            raise InputError(f"cut {cut!r} names one layer twice; name each layer once")
        order = sorted(range(len(parts)), key=lambda i: trace.runs[names[i]].end)
        parts, names = [parts[i] for i in order], [names[i] for i in order]
        self.cut = join_cuts(parts)
        self._cut_module_name = names[-1]
        self._taps = names if len(names) > 1 else []
        modules = dict(self.model.named_modules())

        def tap(_m, _i, output):
            self._cut_out.append(output)

        def last(_m, _i, output):
            self._cut_out.append(output)
            raise _CutReached

        handles = [modules[m].register_forward_hook(tap) for m in names[:-1]]
        handles.append(modules[names[-1]].register_forward_hook(last))
        self._cut_hook = _Hooks(handles)
        _prune_after(self.model, trace, names[-1])


def recut_module_backbone(backbone: Backbone, cut: str) -> Backbone:
    """The same torch backbone cut at ``cut``: its module re-wrapped, not copied.

    Copying would double the memory for a moment and cannot copy every model (a Keras
    model holds a module object, which does not pickle); the new Backbone instead takes
    over ``backbone.model``, drops the old cut and prunes what runs after the new one.
    So ``backbone`` must not be used afterwards: only the returned backbone. Cutting to
    the current cut returns ``backbone`` itself.

    Raises:
        InputError: ``cut`` names no layer, or lies above the current cut: what ran
            after that cut has already been pruned, so it must be created again.
    """
    if cut == backbone.cut:
        return backbone
    if backbone._cut_hook is not None:
        runs = backbone._full_trace.runs
        targets = [backbone._cut_module(p, backbone._full_trace) for p in cut_parts(cut)]
        target = max(targets, key=lambda t: runs[t].end)
        if runs[target].end > runs[backbone._cut_module_name].end:
            raise InputError(
                f"cannot re-cut {backbone.name} at {cut!r}: it is already cut at "
                f"{backbone.cut!r}, below that layer, and what ran after its cut is gone; "
                f"create it again with that cut (create_backbone({backbone.spec!r}, "
                f"cut={cut!r}))"
            )
        backbone._cut_hook.remove()
        backbone._cut_hook = None
    recut = Backbone(
        backbone.model,
        name=backbone.name,
        spec=backbone.spec,
        data_config=backbone.data_config,
        features_fn=backbone._features_fn,
        cut=cut,
        digest=backbone.weights_digest,
        source=backbone.source,
    )
    recut.loader = backbone.loader
    return recut


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _prune_after(model: nn.Module, trace: Trace, cut_module: str) -> None:
    """Replace every module that starts after the cut finished (or never runs) with
    Identity, so dead weights are neither computed, counted nor trained."""
    cut_end = trace.runs[cut_module].end
    ancestors = {cut_module.rsplit(".", i)[0] for i in range(cut_module.count(".") + 1)}

    def dead(name: str) -> bool:
        run = trace.runs.get(name)
        return name not in ancestors and (run is None or run.start > cut_end)

    for name, _ in list(model.named_modules()):
        if not name or not dead(name):
            continue
        parent_name, _, child = name.rpartition(".")
        if parent_name and dead(parent_name):
            continue  # the parent goes as a whole
        parent = model.get_submodule(parent_name) if parent_name else model
        if any(True for _ in parent.get_submodule(child).parameters()) or list(
            parent.get_submodule(child).buffers()
        ):
            setattr(parent, child, nn.Identity())


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _discover_blocks(model: nn.Module, trace: Trace) -> list[Block]:
    """Whole units of the model in execution order.

    Top-level children that hold weights are units; the model's body container
    (a Sequential or ModuleList named like timm's ``blocks``/``stages`` or
    torchvision's ``features``, or one holding 80% of the weights) is opened one
    level so its stages become units. A normalisation layer joins the
    unit before it, so a conv and its BN are never split.
    """
    total = sum(p.numel() for p in model.parameters()) or 1
    units: list[str] = []
    for name, child in model.named_children():
        if name not in trace.runs or not _has_weights(child):
            continue
        share = sum(p.numel() for p in child.parameters()) / total
        body = name in _BODY_NAMES or share > 0.8
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and body and len(child) > 1:
            units += [
                f"{name}.{n}"
                for n, c in child.named_children()
                if f"{name}.{n}" in trace.runs and _has_weights(c)
            ]
        else:
            units.append(name)
    units.sort(key=lambda n: trace.runs[n].start)
    blocks: list[Block] = []
    for name in units:
        module = model.get_submodule(name)
        if blocks and isinstance(module, _NORM_TYPES):
            prev = blocks[-1]
            blocks[-1] = Block(prev.name, (*prev.modules, name))
        else:
            blocks.append(Block(name, (name,)))
    return blocks
