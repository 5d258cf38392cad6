"""The new trainable head that goes on top of the frozen base.

Pooling is parameter-free, so it can run before the feature cache (the frozen base
runs once per image and its features are cached): a head with ``pooling="avg"`` trains
on cached (N, C) vectors, one with ``"flatten"`` (as in the classic Keras tutorials'
``Flatten`` + ``Dense``) on cached maps. The same head module accepts both, so it moves
unchanged from cached features to the backbone for fine-tuning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .errors import InputError

POOLINGS = ("avg", "max", "flatten")


@dataclass
class HeadConfig:
    """Head shape. ``hidden=0`` means a single linear layer after dropout."""

    pooling: str = "avg"
    hidden: int = 0
    dropout: float = 0.2

    def validate(self) -> HeadConfig:
        if self.pooling not in POOLINGS:
            raise InputError(f"head pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"head dropout must be in [0, 1), got {self.dropout}")
        if self.hidden < 0:
            raise InputError(f"head hidden size must be >= 0, got {self.hidden}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class GlobalPool(nn.Module):
    """Pools (B, C, H, W) maps or (B, N, C) tokens to (B, C); passes (B, C) through,
    which is what makes one head work on cached vectors and on live maps."""

    def __init__(self, mode: str = "avg"):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "flatten":
            return torch.flatten(x, 1)
        if x.dim() == 4:
            return x.mean((2, 3)) if self.mode == "avg" else x.amax((2, 3))
        if x.dim() == 3:  # tokens: (B, N, C)
            return x.mean(1) if self.mode == "avg" else x.amax(1)
        return x

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ClassifierHead(nn.Module):
    """Pool -> Dropout -> [Linear -> ReLU -> Dropout] -> Linear.

    Two classes use one logit and a sigmoid (the binary head of the classic Keras
    tutorials); more use softmax.
    """

    def __init__(self, in_features: int, num_classes: int, config: HeadConfig | None = None):
        super().__init__()
        self.config = (config or HeadConfig()).validate()
        if num_classes < 2:
            raise InputError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.binary = num_classes == 2
        layers: list[nn.Module] = [GlobalPool(self.config.pooling), nn.Dropout(self.config.dropout)]
        width = in_features
        if self.config.hidden:
            layers += [
                nn.Linear(width, self.config.hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(self.config.dropout),
            ]
            width = self.config.hidden
        layers.append(nn.Linear(width, 1 if self.binary else num_classes))
        self.layers = nn.Sequential(*layers)
        # temperature scaling (transferkit.calibration): 1.0 while training, fitted on
        # held-out images after it; saved with the weights, so predict, the Python API
        # and exported models all divide by it
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x) / self.temperature

    def set_temperature(self, value: float) -> None:
        """Divide the logits by ``value`` from now on (1.0: uncalibrated)."""
        if not value > 0:
            raise InputError(f"temperature must be > 0, got {value}")
        self.temperature.fill_(float(value))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights saved before temperature scaling existed carry none: 1.0
        state_dict.setdefault(prefix + "temperature", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def loss(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
    ):
        """Mean cross-entropy; with ``class_weights`` (one per class) each example
        counts by its class's weight (the mean is over the weights, as torch's)."""
        if class_weights is not None:
            class_weights = class_weights.to(logits.device, torch.float32)
        if self.binary:
            t = target.float()
            if label_smoothing:
                t = t * (1 - label_smoothing) + 0.5 * label_smoothing
            if class_weights is None:
                return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], t)
            w = class_weights[target]
            per_example = nn.functional.binary_cross_entropy_with_logits(
                logits[:, 0], t, reduction="none"
            )
            return (w * per_example).sum() / w.sum().clamp_min(1e-12)
        return nn.functional.cross_entropy(
            logits, target, weight=class_weights, label_smoothing=label_smoothing
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) probabilities whatever the logit layout."""
        if self.binary:
            p = torch.sigmoid(logits[:, 0])
            return torch.stack([1 - p, p], dim=1)
        return logits.softmax(dim=1)


def balanced_class_weights(labels, num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights: ``n_samples / (n_classes * count_c)`` per
    class ``c`` of ``labels`` (class indices), so every class weighs the same in
    total. A class absent from ``labels`` gets the weight of a class of one image."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels, minlength=num_classes).double()
    weights = len(labels) / (num_classes * counts.clamp_min(1))
    return weights.float()


def head_input_features(feature_shape: tuple[int, ...], pooling: str) -> int:
    """Width of the head's first linear layer for a backbone feature shape."""
    if pooling == "flatten":
        n = 1
        for d in feature_shape:
            n *= d
        return n
    return feature_shape[-1] if len(feature_shape) == 2 else feature_shape[0]


def create_head(
    feature_shape: tuple[int, ...], num_classes: int, config: HeadConfig | None = None
) -> ClassifierHead:
    """A head for features of ``feature_shape`` (per example, as ``Backbone.feature_shape``)."""
    config = (config or HeadConfig()).validate()
    return ClassifierHead(head_input_features(feature_shape, config.pooling), num_classes, config)


class TransferModel(nn.Module):
    """Backbone + head: the model that predicts, fine-tunes, saves and exports.

    With test-time augmentation on (:meth:`set_tta`, kept by ``fit`` only when it
    improved validation), the logits are the mean of the image's and its mirror
    image's; the flag is the buffer ``tta``, saved with the weights, so predict, the
    Python API and exported models all apply it."""

    def __init__(self, backbone: nn.Module, head: ClassifierHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("tta", torch.zeros(()))
        self._flip = False  # the buffer as a Python bool: traced exports see a constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x, self.backbone.forward_features(x))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the image's pooled features (what the head sees), from the
        same pass."""
        features = self.backbone.forward_features(x)
        return self._logits(x, features), self.head.layers[0](features)

    def _logits(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The head's logits; with test-time augmentation, their mean with the mirror
        image's."""
        logits = self.head(features)
        if self._flip:
            mirrored = self.head(self.backbone.forward_features(torch.flip(x, dims=(3,))))
            logits = (logits + mirrored) / 2
        return logits

    def set_tta(self, on: bool) -> None:
        """Average the logits over the image and its mirror image from now on."""
        self.tta.fill_(1.0 if on else 0.0)
        self._flip = bool(on)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights saved before test-time augmentation existed carry none: off
        state_dict.setdefault(prefix + "tta", torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._flip = bool(self.tta)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        try:
            return self.head.probabilities(self(x))
        finally:
            self.train(was)
