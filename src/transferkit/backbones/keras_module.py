"""The torch side of a Keras model: :class:`KerasModule` (layout, training flag,
stable weight names, taps) and :class:`KerasLayerGroup` (a block, frozen Keras's way).

Both implement the protocol :mod:`transferkit.freezing` delegates to
(``transferkit_set_trainable``, ``transferkit_set_bn_policy``,
``transferkit_layer_counts``), so ``freeze``/``unfreeze``/``summary``/``set_bn_policy``
act through Keras's own ``trainable`` flags and weight lists.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..freezing import LayerCount
from .keras_graph import operations


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


def layer_row(layer, seen: set[int]) -> LayerCount:
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


def symbolic_shape(op) -> tuple | None:
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
        return [layer_row(layer, seen) for layer in self.keras_model.layers]

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
