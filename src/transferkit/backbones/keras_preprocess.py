"""Preprocessing of Keras models, each family its own, as transferkit data configs.

Each ``keras.applications`` family expects its own input (Keras's
``preprocess_input``). Every mode here is written as ``data_config`` mean/std on the
[0, 1] scale transferkit's transforms produce, so it is exact, recorded in runs and
part of the feature-cache key; only ``caffe``'s RGB->BGR flip happens inside the
module (a mean/std cannot swap channels).
"""

from __future__ import annotations

from ..errors import InputError

#: mode -> (mean, std) on the [0, 1] scale, and whether channels go RGB -> BGR.
#: (x - mean) / std with x = pixel / 255 gives exactly what Keras's preprocess_input does.
PREPROCESS_MODES: dict[str, tuple[tuple[float, ...], tuple[float, ...], bool]] = {
    # x / 127.5 - 1: Xception, Inception, MobileNet(V2), NASNet, ResNetV2
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False),
    # BGR, 0-255, minus the ImageNet mean: VGG, ResNet (v1). The mean is subtracted in
    # RGB order here and the channels flipped after: the same numbers as Keras's order.
    "caffe": ((123.68 / 255, 116.779 / 255, 103.939 / 255), (1 / 255,) * 3, True),
    # [0, 1] then ImageNet mean/std: DenseNet
    "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    # 0-255 as is: models that normalise inside (EfficientNet, ConvNeXt, MobileNetV3,
    # or a model of yours that starts with a Rescaling/Normalization layer)
    "raw": ((0.0,), (1 / 255,), False),
    # [0, 1]: ImageDataGenerator(rescale=1./255), the classic tutorials' input
    "rescale": ((0.0,), (1.0,), False),
}

_EFFICIENTNET_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300, "B4": 380, "B5": 456}
#: keras.applications name -> (preprocessing mode, default input size)
APPLICATIONS: dict[str, tuple[str, int]] = {
    "Xception": ("tf", 299),
    "InceptionV3": ("tf", 299),
    "InceptionResNetV2": ("tf", 299),
    "MobileNet": ("tf", 224),
    "MobileNetV2": ("tf", 224),
    "MobileNetV3Small": ("raw", 224),
    "MobileNetV3Large": ("raw", 224),
    "NASNetMobile": ("tf", 224),
    "NASNetLarge": ("tf", 331),
    "ResNet50": ("caffe", 224),
    "ResNet101": ("caffe", 224),
    "ResNet152": ("caffe", 224),
    "ResNet50V2": ("tf", 224),
    "ResNet101V2": ("tf", 224),
    "ResNet152V2": ("tf", 224),
    "VGG16": ("caffe", 224),
    "VGG19": ("caffe", 224),
    "DenseNet121": ("torch", 224),
    "DenseNet169": ("torch", 224),
    "DenseNet201": ("torch", 224),
    **{f"EfficientNet{k}": ("raw", v) for k, v in _EFFICIENTNET_SIZES.items()},
    "EfficientNetB6": ("raw", 528),
    "EfficientNetB7": ("raw", 600),
    **{f"EfficientNetV2{k}": ("raw", v) for k, v in list(_EFFICIENTNET_SIZES.items())[:4]},
    "EfficientNetV2S": ("raw", 384),
    "EfficientNetV2M": ("raw", 480),
    "EfficientNetV2L": ("raw", 480),
    **{f"ConvNeXt{k}": ("raw", 224) for k in ("Tiny", "Small", "Base", "Large", "XLarge")},
}


def check_preprocess(mode: str) -> str:
    if mode not in PREPROCESS_MODES:
        raise InputError(
            f"unknown Keras preprocessing {mode!r}; options: {', '.join(PREPROCESS_MODES)}"
        )
    return mode


def keras_data_config(mode: str, size: tuple[int, int], channels: int) -> dict:
    """The ``data_config`` of a preprocessing mode. Keras's own image loaders
    resize the whole image to the input size (no crop, aspect not kept): ``squash``."""
    mean, std, bgr = PREPROCESS_MODES[mode]
    if bgr and channels != 3:
        raise InputError(f"preprocessing {mode!r} flips RGB to BGR: needs 3 channels")
    return {
        "input_size": (channels, *size),
        "interpolation": "bilinear",
        "mean": mean * channels if len(mean) == 1 else mean,
        "std": std * channels if len(std) == 1 else std,
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }


def infer_preprocess(model) -> str:
    """A model that rescales or normalises its own input takes 0-255 pixels (``raw``);
    otherwise assume ``rescale`` ([0, 1]), as ``ImageDataGenerator(rescale=1./255)``."""
    for layer in _flat_layers(model):
        kind = type(layer).__name__
        if kind in ("Rescaling", "Normalization"):
            return "raw"
        if layer.weights or kind.startswith(("Conv", "Dense", "Depthwise", "Separable")):
            break
    return "rescale"


def _flat_layers(model):
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers"):
            yield from _flat_layers(layer)
        else:
            yield layer
