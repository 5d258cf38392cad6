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
- BatchNorm (R3): a non-trainable Keras BN layer always runs in inference mode
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

import torch
from torch import nn

from ..errors import InputError, did_you_mean
from ..freezing import LayerCount, summary
from .base import Backbone, Block, weights_digest
from .keras_loader import PREPROCESS_MODES, keras_data_config

log = logging.getLogger(__name__)

DEFAULT_SIZE = 224


# --------------------------------------------------------------------- the module


def _weight_names(model) -> dict[str, nn.Parameter]:
    """Stable names for the Keras weights: ``LAYER/WEIGHT``, in layer order.

    Keras's own variable paths depend on how the model was made (``sequential/c/kernel``
    after ``load_model``, ``c/kernel`` after ``model_from_json``), and its RNG states
    carry process-wide counters, so neither can key a saved run.
    """
    names: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for layer in model.layers:
        for v in layer.weights:
            value = v.value
            if id(value) in seen:
                continue  # a shared weight is one weight
            if not isinstance(value, nn.Parameter):
                raise InputError(f"Keras weight {v.path!r} is not a torch Parameter")
            seen.add(id(value))
            base = f"{layer.name}/{v.name}".replace(".", "_")
            key, n = base, 1
            while key in names:
                key, n = f"{base}_{n}", n + 1
            names[key] = value
    return names


def _set_layers_trainable(model, layers, trainable: bool) -> None:
    """``layer.trainable = trainable`` for ``layers``, leaving the others as they are.

    Keras reports no trainable weights at all for a model whose own flag is False,
    whatever its layers say, so unfreezing part of a frozen model first makes the
    model trainable and puts the other layers' flags back.
    """
    if trainable and not model.trainable:
        keep = [(layer, layer.trainable) for layer in model.layers]
        model.trainable = True
        for layer, flag in keep:
            layer.trainable = flag
    for layer in layers:
        layer.trainable = trainable


def _layer_row(layer, seen: set[int]) -> LayerCount:
    row = LayerCount(name=layer.name, type=type(layer).__name__)
    trainable = {id(v) for v in getattr(layer, "trainable_weights", [])}
    for v in getattr(layer, "weights", []):
        if id(v.value) not in seen:
            seen.add(id(v.value))
            row.add(v.value, id(v) in trainable)
    return row


def _batchnorm_layers(layers) -> list:
    out = []
    for layer in layers:
        if hasattr(layer, "layers"):
            out += _batchnorm_layers(layer.layers)
        elif "BatchNormalization" in type(layer).__name__:
            out.append(layer)
    return out


def _symbolic_shape(op) -> tuple | None:
    try:
        return tuple(op.output.shape[1:])
    except (AttributeError, ValueError):
        return None


class _Tap(nn.Module):
    """A cut point's output as a torch module call (channels first), so forward hooks
    on ``backbone.model.<cut>`` work as for torch backbones (e.g. transferability's
    one-pass features at every cut). Parameter-free; called only while hooked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _channels_first(y: torch.Tensor) -> torch.Tensor:
    return y.permute(0, 3, 1, 2) if y.dim() == 4 else y


class KerasModule(nn.Module):
    """Wraps a single-input Keras image model: NCHW float tensors in, NCHW (or (B, C))
    features out. Its parameters are the Keras weights, under stable names; its
    children named like the cut points are :class:`_Tap` s."""

    def __init__(
        self,
        keras_model,
        keras,
        *,
        bgr: bool,
        fixed_hw: tuple[int, int] | None,
        taps: list[str] = (),
    ):
        super().__init__()
        # Not a registered child: its own parameter names are unstable (see
        # _weight_names); ``keras_weights`` holds the very same Parameter objects.
        object.__setattr__(self, "keras_model", keras_model)
        object.__setattr__(self, "_keras", keras)
        self.bgr = bgr
        self.fixed_hw = fixed_hw
        self.bn_policy = "train"  # until a policy is set, Keras's trainable flags decide
        self.keras_weights = nn.ParameterDict(_weight_names(keras_model))
        self._tap_models: dict[tuple[str, ...], object] = {}
        for name in taps:
            if "." not in name and not hasattr(self, name):
                self.add_module(name, _Tap())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(
                f"a Keras image backbone takes (B, C, H, W) input, got {tuple(x.shape)}"
            )
        if self.fixed_hw is not None and tuple(x.shape[2:]) != self.fixed_hw:
            h, w = self.fixed_hw
            raise InputError(
                f"this Keras model takes {h}x{w} images, got {x.shape[2]}x{x.shape[3]}: "
                f"leave out --image-size or set it to {h} (keras:NAME models: size= in the "
                "spec sets the size they are built for)"
            )
        x = x.permute(0, 2, 3, 1)
        if self.bgr:
            x = x.flip(-1)
        training = self.training and self.bn_policy == "train"
        hooked = [
            (name, tap)
            for name, tap in self.named_children()
            if isinstance(tap, _Tap) and (tap._forward_hooks or tap._forward_pre_hooks)
        ]
        with self._keras.device(str(x.device)):
            if not hooked:
                y = self.keras_model(x, training=training)
            else:  # one pass that also gives every hooked cut's output
                *taps, y = self._tap_model(tuple(n for n, _ in hooked))(x, training=training)
                for (_, tap), out in zip(hooked, taps, strict=True):
                    tap(_channels_first(out))
        if not isinstance(y, torch.Tensor):
            raise InputError("the Keras model gives several outputs: cut it at one layer (--cut)")
        return _channels_first(y)

    def _tap_model(self, names: tuple[str, ...]):
        if names not in self._tap_models:
            model = self.keras_model
            ops = {op.name: op for op in operations(model)}
            outputs = [ops[n].output for n in names] + [model.outputs[0]]
            self._tap_models[names] = self._keras.Model(model.inputs[0], outputs)
        return self._tap_models[names]

    # The protocol transferkit.freezing delegates to.
    def transferkit_set_trainable(self, trainable: bool) -> None:
        self.keras_model.trainable = trainable

    def transferkit_set_bn_policy(self, policy: str) -> int:
        self.bn_policy = policy
        return len(_batchnorm_layers(self.keras_model.layers))

    def transferkit_layer_counts(self) -> list[LayerCount]:
        seen: set[int] = set()
        return [_layer_row(layer, seen) for layer in self.keras_model.layers]

    def extra_repr(self) -> str:
        return f"keras_model={self.keras_model.name!r}, bgr={self.bgr}"


class KerasLayerGroup:
    """Keras layers that form one block; frozen and unfrozen together, Keras's way."""

    def __init__(self, model, layers: list):
        self._model = model
        self.layers = layers

    def parameters(self):
        for layer in self.layers:
            for v in layer.weights:
                yield v.value

    def modules(self):
        return iter(())  # no torch sub-modules: trainability goes through Keras flags

    def transferkit_set_trainable(self, trainable: bool) -> None:
        _set_layers_trainable(self._model, self.layers, trainable)


# ------------------------------------------------------------------------- graph


def operations(model) -> list:
    """Layers and raw ops (``x + y`` makes an ``Add`` op, not a layer), in Keras's
    topological order."""
    return list(getattr(model, "operations", None) or model.layers)


def _parents(model) -> dict[str, set[str]] | None:
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if not nodes_by_depth:
        return None
    parents: dict[str, set[str]] = {}
    for nodes in nodes_by_depth.values():
        for node in nodes:
            entry = parents.setdefault(node.operation.name, set())
            entry.update(p.operation.name for p in node.parent_nodes)
    return parents


def choke_points(model) -> list[str]:
    """Operations every input-to-output path passes through, in order: in a topological
    order, only that operation's output is still needed after it."""
    names = [op.name for op in operations(model)]
    parents = _parents(model)
    if parents is None:  # no graph to read: treat the model as a chain
        return names
    last_use = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        for p in parents.get(n, ()):
            last_use[p] = max(last_use.get(p, i), i)
    last_use[names[-1]] = len(names)
    live: set[str] = set()
    out = []
    for i, n in enumerate(names):
        live = {m for m in live if last_use[m] > i} | {n}
        if live == {n}:
            out.append(n)
    return out


def _weights(op) -> list:
    return list(getattr(op, "weights", None) or [])


def discover_blocks(model) -> list[Block]:
    """Whole units: segments between choke points. A segment without weights, or of
    normalisation layers only, joins the unit before it; padding joins the unit after
    it (it belongs to the conv it pads); what precedes the first unit joins it."""
    chokes = set(choke_points(model))
    segments, current = [], []
    for op in operations(model):
        current.append(op)
        if op.name in chokes:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    blocks: list[list] = []
    pending: list = []
    for seg in segments:
        kinds = [type(op).__name__ for op in seg]
        weighted = any(_weights(op) for op in seg)
        if all(k.startswith("ZeroPadding") for k in kinds):
            pending += seg
        elif weighted and not (blocks and all("Normalization" in k for k in kinds)):
            blocks.append(pending + seg)
            pending = []
        elif blocks and not pending:
            blocks[-1] += seg
        else:
            pending += seg
    if pending:
        if blocks:
            blocks[-1] += pending
        else:
            blocks.append(pending)
    return [Block(b[-1].name, tuple(op.name for op in b)) for b in blocks]


# ---------------------------------------------------------------------- backbone


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
    (H, W, C) layout, while ``feature_shape`` is transferkit's (C, H, W).
    """

    def __init__(
        self,
        model,
        *,
        keras,
        name: str,
        spec: str,
        preprocess: str,
        size: tuple[int, int] | None = None,
        cut: str | None = None,
        kind: str = "model",
        source: str = "keras",
        extra: dict | None = None,
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
        sub = _cut_model(model, cut, keras, input_tensor)
        self.all_blocks = discover_blocks(sub)
        self.model = KerasModule(
            sub,
            keras,
            bgr=PREPROCESS_MODES[preprocess][2],
            fixed_hw=fixed,
            taps=[b.name for b in self.all_blocks],
        )
        self.name, self.spec, self.source, self.kind = name, spec, source, kind
        self.preprocess = preprocess
        self.data_config = keras_data_config(preprocess, size, int(shape[-1]))
        self.cut = operations(sub)[-1].name
        self._cut_hook = None
        self._extra = dict(extra or {})
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
            row = _layer_row(layer, seen)
            shape = self.layer_shapes.get(layer.name) or _symbolic_shape(layer)
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
