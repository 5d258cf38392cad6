"""Watch a model run once to learn what static code cannot tell: which modules run, in
what order, and what shape each one outputs.

Why tracing instead of reading ``named_children``: registration order is not
execution order in general, and cutting a model ("everything after layer X") is only
well defined in terms of execution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class ModuleRun:
    """One module's first call during the trace."""

    name: str
    type: str
    start: int  # position of the call's start among all module starts/ends
    end: int = -1
    output_shape: tuple[int, ...] | None = None  # per-example shape (batch dim dropped)


@dataclass
class Trace:
    runs: dict[str, ModuleRun] = field(default_factory=dict)

    def order(self) -> list[str]:
        """Module names in the order their first call started."""
        return sorted(self.runs, key=lambda n: self.runs[n].start)


def _shape_of(output) -> tuple[int, ...] | None:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape[1:])
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], torch.Tensor):
        return tuple(output[0].shape[1:])
    return None


def trace_modules(
    model: nn.Module, run: Callable[[torch.Tensor], object], x: torch.Tensor
) -> Trace:
    """Run ``run(x)`` once under no_grad and record every named module's first call."""
    trace = Trace()
    clock = [0]
    handles = []
    names = {id(m): n for n, m in model.named_modules() if n}

    def pre(module, _args):
        name = names.get(id(module))
        if name is not None and name not in trace.runs:
            trace.runs[name] = ModuleRun(name, type(module).__name__, clock[0])
        clock[0] += 1

    def post(module, _args, output):
        name = names.get(id(module))
        if name is not None and trace.runs[name].end < 0:
            trace.runs[name].end = clock[0]
            trace.runs[name].output_shape = _shape_of(output)
        clock[0] += 1

    for m in model.modules():
        if id(m) in names:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return trace


def layer_report(backbone) -> dict:
    """Everything ``transferkit inspect`` shows: per-layer output shapes and Keras-style
    weight counts, totals, blocks and cut points, for the backbone's default input."""
    from ..freezing import summary

    own = getattr(backbone, "layer_report", None)
    if own is not None:  # a backbone whose layers are not torch modules (Keras)
        return own()
    x = torch.zeros(1, *backbone.input_size)
    trace = trace_modules(backbone.model, backbone.forward_features, x)
    counts = {row.name: row for row in summary(backbone.model).layers}
    layers = []
    for name in trace.order():
        run = trace.runs[name]
        row = counts.get(name)
        layers.append(
            {
                "name": name,
                "type": run.type,
                "depth": name.count("."),
                "output_shape": list(run.output_shape) if run.output_shape else None,
                "weights": row.weights if row else 0,
                "params": row.params if row else 0,
                "trainable_params": row.trainable_params if row else 0,
                "non_trainable_params": row.non_trainable_params if row else 0,
            }
        )
    total = summary(backbone)
    info = backbone.describe()
    info["input_shape"] = list(backbone.input_size)
    info["totals"] = {k: v for k, v in total.to_dict().items() if k != "layers"}
    info["layers"] = layers
    return info
