"""The one way features leave a backbone: run it over image batches in inference
mode and pool what comes out, at its own cut or at several cuts in one pass.

Fitting uses it to fill the feature cache (the backbone's cut, the head's pooling);
the strategy advisor and the transferability scores use it to get globally pooled
features at every candidate cut from a single pass (forward hooks catch each cut's
output, so the images run through the backbone once, not once per cut). Both go
through the same device handling (:class:`~transferkit.compute.Compute`: NHWC,
autocast) and the same :func:`pool`, so the advisor's features at a cut are the
very features that fitting would extract there and can seed the cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..backbones.base import Backbone
from ..compute import Compute, uses_channels_last
from ..errors import InputError, did_you_mean
from ..progress import progress_iter

REPRESENTATIONS = ("avg", "max", "map")


def representation_for(pooling: str) -> str:
    """What the cache stores for a head's pooling: pooled vectors, or whole maps."""
    return "map" if pooling == "flatten" else pooling


def pool(x, representation: str = "avg") -> torch.Tensor:
    """(B, C) from (B, C, H, W) maps or (B, N, C) tokens by mean (``avg``) or max;
    (B, C) vectors pass through; ``map`` keeps the output as it is. A layer that
    returns a tuple contributes its first item."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    if representation == "map" or x.dim() == 2:
        return x
    if x.dim() not in (3, 4):
        return x.flatten(1)
    dims = (2, 3) if x.dim() == 4 else (1,)
    return x.mean(dims) if representation == "avg" else x.amax(dims)


def root_module(model: nn.Module) -> nn.Module:
    """The module that layer names refer to: ``Backbone.model`` for a Backbone, so
    names match ``Backbone.all_blocks`` and ``cut_points``."""
    return model.model if isinstance(model, Backbone) else model


def images_of(batch) -> torch.Tensor:
    """A batch is an image tensor, or an (images, labels, ...) tuple as loaders yield."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise InputError(
            f"batches must yield image tensors or (images, ...) tuples, got {type(batch).__name__}"
        )
    return batch


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the pass; every module's own mode restored
    after, so extracting never changes how the caller's model trains."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


class _AllCaptured(Exception):
    """Raised once every cut's output exists, so layers above the top cut never run."""


def cut_modules(model: nn.Module, cuts: Sequence[str]) -> dict[str, str]:
    """Map each cut to the module whose output it is: a ``Backbone`` cut point is a
    block, whose output is that of its last module; any other module name stands for
    itself."""
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


class CutCapture:
    """Forward hooks that keep each cut's output of the current batch, passed through
    ``reduce`` as soon as it exists (pooling there keeps no whole feature maps alive).

    With ``stop_early`` a batch's forward pass ends once every cut has run, so layers
    above the highest cut cost nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        cuts: Sequence[str],
        *,
        stop_early: bool = True,
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda o: o,
    ):
        if not cuts:
            raise InputError("give at least one cut (a cut point or a module name)")
        self.model = model
        self.cuts = list(dict.fromkeys(cuts))
        self.targets = cut_modules(model, self.cuts)
        self.stop_early = stop_early
        self.reduce = reduce
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, module_name: str):
        def hook(_module, _inputs, output):
            for cut, name in self.targets.items():
                if name == module_name and cut not in self.outputs:
                    self.outputs[cut] = self.reduce(output)
            if self.stop_early and len(self.outputs) == len(self.targets):
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

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run one batch; each cut's output, in the order of ``cuts``."""
        self.outputs = {}
        with contextlib.suppress(_AllCaptured):
            self.model(x)
        missing = [cut for cut in self.cuts if cut not in self.outputs]
        if missing:
            name = getattr(self.model, "name", "the model")
            raise InputError(
                f"cut {missing[0]!r} did not run in {name} (is the backbone "
                "already cut below it? pass an uncut backbone)"
            )
        return {cut: self.outputs[cut] for cut in self.cuts}


def _default_compute(model: nn.Module) -> Compute:
    """Where a model already is: its parameters' device, NHWC batches if its
    convolutions are NHWC (so they are not converted back and forth)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return Compute(device, channels_last=uses_channels_last(model))


def iter_features(
    backbone: nn.Module,
    batches: Iterable,
    *,
    cuts: Sequence[str] | None = None,
    representation: str = "avg",
    compute: Compute | None = None,
    description: str | None = None,
    stop_early: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{cut: (B, ...) float32 array}`` for each batch of images.

    Args:
        backbone: a ``Backbone`` (or any module).
        batches: image tensors or ``(images, labels)`` tuples (a DataLoader),
            preprocessed for the backbone.
        cuts: ``None``: the backbone's own output (``forward_features``, under
            ``torch.compile`` when ``compute`` asks for it), keyed by its ``cut``;
            else cut points or module names, caught by forward hooks in one pass.
        representation: ``avg``, ``max`` or ``map`` (see :func:`pool`).
        compute: device, precision and layout; given, the backbone is also moved
            there (``Compute.prepare``); default: wherever the backbone is.
        description: show a progress bar with this label.
        stop_early: with ``cuts``, end each forward once every cut has run (False:
            run the whole backbone, e.g. to measure every BatchNorm layer).
    """
    if compute is None:
        compute = _default_compute(backbone)
    else:
        compute.prepare(backbone)
    if description is not None:
        batches = progress_iter(batches, total=len(batches), description=description, unit="batch")

    def reduce(output) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            output = output[0]
        return pool(output.float(), representation)

    with contextlib.ExitStack() as stack:
        stack.enter_context(inference(backbone))
        if cuts is None:
            key = getattr(backbone, "cut", None) or "output"
            forward = compute.maybe_compile(getattr(backbone, "forward_features", backbone))
            run = lambda x: {key: reduce(forward(x))}  # noqa: E731 - one name for both paths
        else:
            capture = CutCapture(backbone, cuts, stop_early=stop_early, reduce=reduce)
            run = stack.enter_context(capture)
        for batch in batches:
            x = compute.to_device(images_of(batch))
            with compute.autocast():
                outputs = run(x)
            yield {c: o.cpu().numpy() for c, o in outputs.items()}


def collect_features(backbone, batches, *, max_batches: int | None = None, **kwargs):
    """:func:`iter_features` into one ``{cut: (N, ...) array}``; an error for no batches.

    ``max_batches`` stops after that many batches."""
    if max_batches is not None and max_batches < 1:
        raise InputError(f"max_batches must be at least 1, got {max_batches}")
    parts: dict[str, list[np.ndarray]] = {}
    stream = iter_features(backbone, batches, **kwargs)
    try:
        for i, feats in enumerate(stream):
            for cut, f in feats.items():
                parts.setdefault(cut, []).append(f)
            if max_batches is not None and i + 1 >= max_batches:
                break
    finally:
        stream.close()  # hooks off and modes back now, not when collected
    if not parts:
        raise InputError("no batches to run: the data is empty")
    return {cut: np.concatenate(fs, axis=0) for cut, fs in parts.items()}
