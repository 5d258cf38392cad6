"""A Keras 3 (torch backend) model as a :class:`~.base.Backbone`.

On the torch backend a Keras model is a ``torch.nn.Module`` and its weights are torch
Parameters, so transferkit's engine trains it like any other module. What differs,
and is handled here:

- Layout: transferkit feeds NCHW tensors; Keras image models take NHWC. The module
  permutes on the way in and gives 4-D features back as NCHW.
- Cutting: a cut is a Keras sub-model, ``keras.Model(model.input,
  model.get_layer(cut).output)``, exactly as the Keras guides build one.
- Trainability: Keras keeps its own ``trainable`` flags (and ``trainable_weights``);
  freezing sets them the Keras way (``layer.trainable = False``), which on this
  backend also sets ``requires_grad``. Counts are Keras's own ``len(layer.weights)``,
  ``trainable_weights`` and ``non_trainable_weights``. :mod:`transferkit.freezing`
  delegates to the ``transferkit_*`` methods of :class:`KerasModule` and
  :class:`KerasLayerGroup` for this.
- BatchNorm: a non-trainable Keras BN layer always runs in inference mode
  (Keras's own rule). With policy ``frozen`` the whole base is called with
  ``training=False``, as the Keras guide does (``base_model(x, training=False)``);
  with ``train`` it follows the torch module's ``train()``/``eval()`` mode.
- Blocks: whole units between the graph's choke points (layers every path from input
  to output passes through: ``mixed0`` ... ``mixed10`` in InceptionV3, each residual
  block's output in ResNet50), weightless layers and BatchNorm joined to the unit
  before them, so a conv is never split from its BN.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError, did_you_mean
from ..freezing import summary
from .base import CUT_JOIN, Backbone, weights_digest
from .keras_graph import discover_blocks, operations
from .keras_module import KerasLayerGroup, KerasModule, layer_row, symbolic_shape
from .keras_preprocess import PREPROCESS_MODES, keras_data_config

log = logging.getLogger(__name__)

DEFAULT_SIZE = 224


# ---------------------------------------------------------------------- backbone


@dataclass
class KerasOrigin:
    """Where a Keras backbone's model came from: what ``describe()`` records so that a
    saved run can rebuild it, and what a re-cut keeps (it is still that model).

    Attributes:
        kind: ``"application"`` (``keras:NAME``), ``"file"`` (``.keras``/``.h5``) or
            ``"model"`` (a Keras model object).
        spec: the spec it was made from (``"<keras model>"`` for an object).
        source: a one-line account for reports, e.g. ``keras file (file convnet.keras)``.
        extra: ``{"application": NAME}`` or ``{"file": PATH}``, recorded as they are.
    """

    kind: str = "model"
    spec: str = "<keras model>"
    source: str = "keras model (in memory)"
    extra: dict = field(default_factory=dict)


def _single_input(model) -> tuple:
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        inputs = []
    if not inputs:
        raise InputError(
            f"Keras model {model.name!r} has no defined input; build it with keras.Input "
            "(or an input_shape) before using it as a backbone"
        )
    if len(inputs) != 1:
        raise InputError(
            f"Keras model {model.name!r} has {len(inputs)} inputs; one image input is needed"
        )
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise InputError(
            f"Keras model {model.name!r} takes input {shape}; a backbone takes images "
            "(batch, height, width, 1 or 3 channels), channels last"
        )
    return inputs[0], shape


def _cut_model(model, cut: str | None, keras, input_tensor):
    """The Keras sub-model from the input to ``cut`` (default: the single output)."""
    outputs = list(model.outputs)
    if cut is None and len(outputs) != 1:
        raise InputError(f"Keras model {model.name!r} has {len(outputs)} outputs: give --cut LAYER")
    full = keras.Model(input_tensor, outputs if len(outputs) > 1 else outputs[0], name=model.name)
    if cut is None:
        return full
    ops = {op.name: op for op in operations(full)}
    if cut not in ops:
        points = ", ".join(b.name for b in discover_blocks(full))
        raise InputError(
            f"cannot cut {model.name} at {cut!r}: no such Keras layer"
            f"{did_you_mean(cut, list(ops))} (cut points: {points})"
        )
    layer = ops[cut]
    if type(layer).__name__ == "InputLayer":
        raise InputError(f"cannot cut {model.name} at its input layer {cut!r}")
    try:
        output = layer.output
    except (AttributeError, ValueError) as exc:
        raise InputError(f"cannot cut {model.name} at {cut!r}: {exc}") from None
    if isinstance(output, (list, tuple)):
        raise InputError(f"cannot cut {model.name} at {cut!r}: that layer has several outputs")
    return keras.Model(input_tensor, output, name=model.name)


def _warn_if_classifier(model, cut_points: list[str]) -> None:
    last = operations(model)[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if type(last).__name__ == "Dense" and activation in ("softmax", "sigmoid"):
        below = cut_points[-2] if len(cut_points) > 1 else "LAYER"
        log.warning(
            "Keras model %r ends in its classifier (%s, %s): its features would be the old "
            "class probabilities; cut below it, e.g. --cut %s",
            model.name,
            last.name,
            activation,
            below,
        )


class KerasBackbone(Backbone):
    """A Keras model cut at a named layer, speaking the :class:`Backbone` contract.

    Built by :func:`~.keras_loader.create_keras_backbone`. ``keras_model`` is the
    cut Keras sub-model; ``keras_output_shape`` its per-example output in Keras's
    (H, W, C) layout, while ``feature_shape`` is transferkit's (C, H, W). ``origin``
    (:class:`KerasOrigin`) says where the model came from.
    """

    loader = "keras"
    joinable_cuts = False

    def __init__(
        self,
        model,
        *,
        keras,
        name: str,
        preprocess: str,
        size: tuple[int, int] | None = None,
        cut: str | None = None,
        origin: KerasOrigin | None = None,
    ):
        nn.Module.__init__(self)  # Backbone.__init__ traces torch modules; Keras has layers
        input_tensor, shape = _single_input(model)
        fixed = tuple(shape[1:3]) if None not in shape[1:3] else None
        if fixed and size and tuple(size) != fixed:
            raise InputError(
                f"Keras model {model.name!r} takes {fixed[0]}x{fixed[1]} images, "
                f"not size={size[0]}x{size[1]}"
            )
        size = fixed or tuple(size or (DEFAULT_SIZE, DEFAULT_SIZE))
        if cut is not None and CUT_JOIN in cut:
            raise InputError(
                f"cut {cut!r} joins layers, which Keras models do not support yet; "
                "cut a Keras model at one layer"
            )
        sub = _cut_model(model, cut, keras, input_tensor)
        self.all_blocks = discover_blocks(sub)
        self.model = KerasModule(
            sub,
            keras,
            bgr=PREPROCESS_MODES[preprocess][2],
            fixed_hw=fixed,
            taps=[b.name for b in self.all_blocks],
        )
        origin = origin or KerasOrigin()
        self.name, self.spec, self.source, self.kind = name, origin.spec, origin.source, origin.kind
        self.preprocess = preprocess
        self.data_config = keras_data_config(preprocess, size, int(shape[-1]))
        self.cut = operations(sub)[-1].name
        self._cut_hook = None
        self._extra = dict(origin.extra)
        self.layer_shapes, self.keras_output_shape = self._trace()
        out = self.keras_output_shape
        self.feature_shape = (out[-1], *out[:-1]) if len(out) == 3 else tuple(out)
        self.num_features = int(self.feature_shape[0] if len(out) == 3 else out[-1])
        self.weights_digest = weights_digest(self.model)
        if cut is None:
            _warn_if_classifier(sub, self.cut_points)

    @property
    def keras_model(self):
        return self.model.keras_model

    @property
    def origin(self) -> KerasOrigin:
        return KerasOrigin(self.kind, self.spec, self.source, dict(self._extra))

    @property
    def fixed_input_size(self) -> bool:
        """Whether the Keras model takes only ``input_size`` images (its input shape
        was saved or built with a height and width), not any size."""
        return self.model.fixed_hw is not None

    @property
    def blocks(self) -> list[tuple[str, KerasLayerGroup]]:
        sub = self.keras_model
        layers = {layer.name: layer for layer in sub.layers}
        return [
            (b.name, KerasLayerGroup(sub, [layers[n] for n in b.modules if n in layers]))
            for b in self.all_blocks
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _trace(self) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
        """One forward at the input size: each layer's and the output's per-example
        shape, in Keras's layout (H, W, C)."""
        model = self.keras_model
        c, h, w = self.input_size
        shapes: dict[str, tuple[int, ...]] = {model.layers[0].name: (h, w, c)}
        handles = []
        for layer in model.layers:

            def hook(_module, _args, output, name=layer.name):
                out = output[0] if isinstance(output, (list, tuple)) else output
                shapes.setdefault(name, tuple(out.shape[1:]))

            handles.append(layer.register_forward_hook(hook))
        try:
            with torch.no_grad(), self.model._keras.device("cpu"):
                out = tuple(model(torch.zeros(1, h, w, c), training=False).shape[1:])
        finally:
            for handle in handles:
                handle.remove()
        if len(out) not in (1, 2, 3):
            raise InputError(f"cut {self.cut!r} gives {out} per image: not a feature")
        shapes[self.cut] = out
        return shapes, out

    def describe(self) -> dict:
        info = super().describe()
        keras = {
            "kind": self.kind,
            "preprocess": self.preprocess,
            "input_size": list(self.input_size[1:]),
            "output_shape": list(self.keras_output_shape),
            **self._extra,
        }
        if self.kind != "application":  # what rebuilds it without the original file
            try:
                keras["model_config"] = json.loads(self.keras_model.to_json())
            except Exception as exc:  # e.g. a custom layer without get_config
                log.warning("the Keras model's architecture cannot be recorded: %s", exc)
        info["keras"] = keras
        return info

    def layer_report(self) -> dict:
        """What ``transferkit inspect`` shows, with Keras's layer names, types, output
        shapes (as ``model.summary()`` prints them, channels last) and weight counts."""
        seen: set[int] = set()
        layers = []
        for layer in operations(self.keras_model):
            row = layer_row(layer, seen)
            shape = self.layer_shapes.get(layer.name) or symbolic_shape(layer)
            layers.append(
                {
                    "name": layer.name,
                    "type": row.type,
                    "depth": 0,
                    "output_shape": list(shape) if shape is not None else None,
                    "weights": row.weights,
                    "trainable_weights": row.trainable_weights,
                    "non_trainable_weights": row.non_trainable_weights,
                    "params": row.params,
                    "trainable_params": row.trainable_params,
                    "non_trainable_params": row.non_trainable_params,
                }
            )
        info = self.describe()
        info["keras"].pop("model_config", None)
        info["input_shape"] = list(self.input_size)
        info["totals"] = {k: v for k, v in summary(self).to_dict().items() if k != "layers"}
        info["layers"] = layers
        return info
