"""Preprocessing, which comes from the backbone's own data config; training augmentation.

Eval: resize so the crop covers ``crop_pct`` of the image, centre-crop to the input
size, scale to [0, 1], normalise with the backbone's mean/std (timm's recipe, so
features match what the weights were trained on). Train: a random resized crop,
horizontal flip and light colour jitter, then the same normalisation. Augmentation
is off for feature caching (the base runs once and its features are cached): cached
features must be the eval view.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..errors import InputError
from .images import to_channels

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
    "random": InterpolationMode.BILINEAR,  # timm's training-time choice; bilinear at eval
}
_CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation. Light on purpose: small datasets, pretrained features.

    Attributes:
        hflip: random horizontal flips (turn off for text, digits, asymmetric signs).
        rrc_scale: area range of the random resized crop.
        color_jitter: brightness/contrast/saturation jitter strength (0 for none).
        enabled: False gives the eval transform even when ``train=True``.
    """

    hflip: bool = True
    rrc_scale: tuple[float, float] = (0.6, 1.0)
    color_jitter: float = 0.1
    enabled: bool = True


class ImageTransform:
    """PIL image -> normalised float tensor (C, H, W). Picklable, for loader workers.

    Attributes:
        channels: 1 or 3, the backbone's input channels; any input mode is converted.
        config: the resolved preprocessing (JSON-able), for run configs and cache keys.
    """

    def __init__(self, ops: list, channels: int, config: dict):
        self.ops = T.Compose(ops)
        self.channels = channels
        self.config = config

    def __call__(self, img: Image.Image):
        return self.ops(to_channels(img, self.channels))

    def __repr__(self) -> str:
        return f"ImageTransform(channels={self.channels}, {self.ops!r})"


def create_transform(
    data_config: dict,
    *,
    train: bool,
    image_size: int | None = None,
    augment: AugmentConfig | None = None,
) -> ImageTransform:
    """Build the train or eval transform for a backbone.

    Args:
        data_config: timm-style: ``input_size`` (C, H, W), ``interpolation``,
            ``mean``, ``std``, ``crop_pct``, ``crop_mode`` (usually
            ``backbone.data_config``).
        train: training transform (augmented) or evaluation transform.
        image_size: square input size overriding ``input_size`` (e.g. ``--image-size``).
        augment: augmentation settings; default ``AugmentConfig()``.

    Returns:
        An ``ImageTransform``: call it on a PIL image to get a (C, H, W) tensor.

    Example:
        >>> tf = create_transform(backbone.data_config, train=False)  # doctest: +SKIP
        >>> tf(open_image("cat.jpg")).shape  # doctest: +SKIP
        torch.Size([3, 224, 224])
    """
    cfg = _resolve(data_config, image_size)
    augment = augment or AugmentConfig()
    augmenting = train and augment.enabled
    interp = _INTERPOLATION[cfg["interpolation"]]
    size = (cfg["input_size"][1], cfg["input_size"][2])
    ops = _train_ops(size, interp, augment) if augmenting else _eval_ops(cfg, size, interp)
    ops.append(_ToNormalizedTensor(cfg["mean"], cfg["std"]))
    cfg["train"] = augmenting
    cfg["augment"] = _jsonable(asdict(augment)) if augmenting else None
    return ImageTransform(ops, cfg["input_size"][0], cfg)


def _resolve(data_config: dict, image_size: int | None) -> dict:
    """Validate the config and fill what timm leaves optional."""
    try:
        c, h, w = (int(v) for v in data_config["input_size"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"data_config needs input_size (C, H, W), got {data_config!r}") from None
    if c not in (1, 3):
        raise InputError(f"backbone input must have 1 or 3 channels, got {c}")
    if image_size is not None:
        if not isinstance(image_size, int) or image_size < 8:
            raise InputError(f"image size must be an integer of at least 8 px, got {image_size!r}")
        h = w = image_size
    interpolation = str(data_config.get("interpolation", "bicubic")).lower()
    if interpolation not in _INTERPOLATION:
        raise InputError(
            f"unknown interpolation {interpolation!r}; options: {', '.join(_INTERPOLATION)}"
        )
    crop_mode = str(data_config.get("crop_mode") or "center").lower()
    if crop_mode not in _CROP_MODES:
        raise InputError(f"unknown crop_mode {crop_mode!r}; options: {', '.join(_CROP_MODES)}")
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    if not 0 < crop_pct <= 1:
        raise InputError(f"crop_pct must be in (0, 1], got {crop_pct}")
    mean = _per_channel(data_config.get("mean", (0.5,) * 3), c, "mean")
    std = _per_channel(data_config.get("std", (0.5,) * 3), c, "std")
    return {
        "input_size": [c, h, w],
        "interpolation": interpolation,
        "mean": mean,
        "std": std,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


def _per_channel(values, channels: int, name: str) -> list[float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(values) == 1:
        values = values * channels
    if channels == 1 and len(values) == 3:
        # A 1-channel input to RGB statistics: the luminance of the three.
        values = [0.299 * values[0] + 0.587 * values[1] + 0.114 * values[2]]
    if len(values) != channels:
        raise InputError(f"{name} has {len(values)} values for {channels} channels")
    return values


def _eval_ops(cfg: dict, size: tuple[int, int], interp) -> list:
    scale = tuple(math.floor(s / cfg["crop_pct"]) for s in size)
    if cfg["crop_mode"] == "squash":  # both sides to scale, aspect ratio not kept
        return [T.Resize(scale, interpolation=interp), T.CenterCrop(size)]
    if cfg["crop_mode"] == "border":  # whole image inside the crop, padded
        return [_ResizeLonger(min(size), interp), T.CenterCrop(size)]
    short = scale[0] if size[0] == size[1] else scale
    return [T.Resize(short, interpolation=interp), T.CenterCrop(size)]


def _train_ops(size: tuple[int, int], interp, augment: AugmentConfig) -> list:
    lo, hi = augment.rrc_scale
    if not 0 < lo <= hi <= 1:
        raise InputError(f"rrc_scale must satisfy 0 < low <= high <= 1, got {augment.rrc_scale}")
    ops: list = [T.RandomResizedCrop(size, scale=(lo, hi), interpolation=interp)]
    if augment.hflip:
        ops.append(T.RandomHorizontalFlip())
    if augment.color_jitter:
        j = float(augment.color_jitter)
        ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    return ops


class _ToNormalizedTensor:
    """PIL image -> (C, H, W) float32 tensor, ``(x / 255 - mean) / std``.

    Same result as ``ToTensor`` + ``Normalize``, computed in numpy: torch's intra-op
    thread pool is slow to wake for a few small ops per image, and on a busy machine
    it made the main-process loader ten times slower (bench/loader_throughput.py).
    """

    def __init__(self, mean: list[float], std: list[float]):
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.scale = 1.0 / (np.asarray(std, np.float32) * 255.0)
        self.mean_std = (list(mean), list(std))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        arr = (arr - self.mean) * self.scale
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean_std[0]}, std={self.mean_std[1]})"


class _ResizeLonger:
    """Resize so the longer side equals ``size`` (the rest is padded by CenterCrop)."""

    def __init__(self, size: int, interp):
        self.size, self.interp = size, interp

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        s = self.size / max(w, h)
        return T.functional.resize(
            img, [max(1, round(h * s)), max(1, round(w * s))], interpolation=self.interp
        )


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
