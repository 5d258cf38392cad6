"""Globally pooled features at several cut layers from one pass over the images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError, did_you_mean
from ._running import root_module, run_batches


class _AllCaptured(Exception):
    """Raised once every cut's output exists, so layers above the top cut never run."""


def cut_modules(model: nn.Module, cuts: Sequence[str]) -> dict[str, str]:
    """Map each cut to the module whose output it is.

    A cut point of a ``Backbone`` is a block, whose output is that of its last
    module (``Block.modules[-1]``); any other module name stands for itself.
    """
    blocks = {b.name: b.modules[-1] for b in getattr(model, "all_blocks", [])}
    names = [n for n, _ in root_module(model).named_modules() if n]
    out = {}
    for cut in cuts:
        if cut in blocks:
            out[cut] = blocks[cut]
        elif cut in names:
            out[cut] = cut
        else:
            options = ", ".join(blocks) if blocks else "any module name"
            raise InputError(
                f"unknown cut {cut!r}{did_you_mean(cut, [*blocks, *names])} (cut points: {options})"
            )
    return out


def global_pool(output) -> torch.Tensor:
    """(B, C) from (B, C, H, W) maps, (B, N, C) tokens or (B, C) vectors."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output.mean(dim=1)
    return output.flatten(1)


class CutCapture:
    """Forward hooks that collect each cut's globally pooled output, batch by batch.

    Use as a context manager around :func:`run_batches` with ``forward=capture.forward``.
    With ``stop_early`` a batch's forward pass ends once every cut has run, so layers
    above the highest cut cost nothing.
    """

    def __init__(self, model: nn.Module, cuts: Sequence[str] | None, *, stop_early: bool = True):
        if cuts is None:
            cuts = getattr(model, "cut_points", None) or []
        if not cuts:
            raise InputError("give at least one cut (a cut point or a module name)")
        self.model = model
        self.cuts = list(dict.fromkeys(cuts))
        self.targets = cut_modules(model, self.cuts)
        self.stop_early = stop_early
        self.pooled: dict[str, list[torch.Tensor]] = {cut: [] for cut in self.cuts}
        self._seen: set[str] = set()
        self._handles: list = []

    def _hook(self, module_name: str):
        def hook(_module, _inputs, output):
            feats = global_pool(output).detach().float().cpu()
            for cut, name in self.targets.items():
                if name == module_name and cut not in self._seen:
                    self.pooled[cut].append(feats)
                    self._seen.add(cut)
            if self.stop_early and len(self._seen) == len(self.targets):
                raise _AllCaptured

        return hook

    def __enter__(self) -> CutCapture:
        modules = dict(root_module(self.model).named_modules())
        # Prepended, so they run before a Backbone's own cut hook ends the pass.
        self._handles = [
            modules[name].register_forward_hook(self._hook(name), prepend=True)
            for name in set(self.targets.values())
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def forward(self, x: torch.Tensor) -> None:
        self._seen.clear()
        with contextlib.suppress(_AllCaptured):
            self.model(x)

    def features(self, batches_run: int) -> dict[str, np.ndarray]:
        """``{cut: (N, C) float32}``; an error if a cut missed a batch."""
        missing = [cut for cut, feats in self.pooled.items() if len(feats) != batches_run]
        if missing:
            name = getattr(self.model, "name", "the model")
            raise InputError(
                f"cut {missing[0]!r} did not run in {name} (is the backbone "
                "already cut below it? pass an uncut backbone)"
            )
        return {cut: torch.cat(self.pooled[cut]).numpy() for cut in self.cuts}


def pooled_features_per_cut(
    backbone: nn.Module | Callable[[], nn.Module],
    batches: Iterable,
    cuts: Sequence[str] | None = None,
    *,
    max_batches: int | None = None,
) -> dict[str, np.ndarray]:
    """Globally average-pooled features at each cut, from one pass over the images.

    Forward hooks catch each cut's output, so the images run through the backbone
    once, not once per cut, and each batch stops as soon as every cut has run. The
    model runs in eval mode without gradients; its modes are restored afterwards.

    Args:
        backbone: a ``Backbone`` (or any module), or a zero-argument factory of one.
            A backbone already cut below a requested cut cannot produce it.
        batches: image tensors (B, C, H, W), or tuples whose first item is one,
            preprocessed for the backbone (R7). Row order follows the batches.
        cuts: cut points (``Backbone.cut_points``) or module names; ``None``: all
            of the backbone's cut points.
        max_batches: stop after this many batches.

    Returns:
        ``{cut: (N, C) float32 array}`` in the order of ``cuts``.

    Example:
        >>> from transferkit import create_backbone  # doctest: +SKIP
        >>> bb = create_backbone("resnet18", weights="none")  # doctest: +SKIP
        >>> x = torch.randn(4, 3, 32, 32)  # doctest: +SKIP
        >>> feats = pooled_features_per_cut(bb, [x], ["layer1", "layer4"])  # doctest: +SKIP
        >>> {cut: f.shape for cut, f in feats.items()}  # doctest: +SKIP
        {'layer1': (4, 64), 'layer4': (4, 512)}
    """
    model = backbone if isinstance(backbone, nn.Module) else backbone()
    with CutCapture(model, cuts) as capture:
        count = run_batches(model, batches, max_batches=max_batches, forward=capture.forward)
    return capture.features(count)
