"""GPU input path: working copies decoded on the GPU in batches, resized there.

Why: a GPU runs efficientnet_lite0 at thousands of images/s; a CPU core decodes and
resizes a 336 px working copy in ~4 ms, so four loader workers feed it ~1,000 images/s
at best. On a CUDA device the evaluation loader (feature extraction, validation,
the advisor's measurement) therefore ships the working copies' JPEG bytes, which
``torchvision.io.decode_jpeg(device="cuda")`` decodes a batch at a time (nvJPEG);
resize, centre crop and normalisation follow on the GPU. Images not larger than the
working side have no copy: they are transformed on the CPU as before and copied to
the GPU from pinned memory, non-blocking. Training batches (random crops, flips and
jitter per image) keep the CPU path with worker processes.

Which path is chosen by measurement (``choose_decoding``): once per process and
setting, a sample of the data set's copies is decoded both ways, nvJPEG plus the
tensor transform on the device against Pillow plus the PIL transform on one core
times the loader processes that would do it; the faster one is used, and the choice
is logged with both speeds.

The GPU result matches the CPU path to within decoder and resampling rounding
(``tests/test_photos_gpu.py`` checks the same functions with ``device="cpu"``).
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch.nn import functional as F

from ..errors import InputError
from .copies import load_working_bytes
from .images import _describe, decode_copy, to_channels
from .reading import reading_pool, reading_threads

log = logging.getLogger("transferkit.data")
_DECODE_OK: dict[str, bool] = {}


def gpu_decodable(dataset, device: str | torch.device) -> bool:
    """Whether ``create_loader`` should decode ``dataset`` on ``device``: a CUDA
    device whose nvJPEG decodes, and an ``ImageDataset`` (or a ``Subset`` of one,
    as feature extraction passes the images it has no features for) with an
    evaluation transform (3 channels, centre crop) and a working side."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if tensor_transform(dataset) is None:
        return False
    return _decoder_works(device)


@dataclass(frozen=True)
class DecodeChoice:
    """The measured speeds of the two evaluation input paths, and the one taken."""

    on_device: bool
    device_images_per_s: float
    cpu_images_per_s: float  # one core's speed times the processes or threads reading
    workers: int
    sample: int
    pinned: bool = False  # set by TRANSFERKIT_GPU_DECODE, not measured


_CHOICES: dict[tuple, DecodeChoice] = {}
SAMPLE_IMAGES = 32
PIN_ENV = "TRANSFERKIT_GPU_DECODE"


def choose_decoding(dataset, device: str | torch.device, workers: int) -> DecodeChoice | None:
    """Whether to decode ``dataset``'s evaluation batches on ``device``: measured
    (``measure_decoding``) once per device, working side, transform and worker count,
    and logged once; or pinned by ``TRANSFERKIT_GPU_DECODE=gpu|cpu`` (``auto``, the
    default, measures). ``None``: the sample had no working copies (small images
    only), so there is nothing to decode on the device; not remembered, so a later
    data set with copies is measured.

    Raises:
        InputError: ``TRANSFERKIT_GPU_DECODE`` is not auto, gpu or cpu.
    """
    inner, _ = unwrap(dataset)
    config = getattr(getattr(inner, "transform", None), "config", None)
    key = (str(torch.device(device)), getattr(inner, "side", None), workers, repr(config))
    if key in _CHOICES:
        return _CHOICES[key]
    pin = os.environ.get(PIN_ENV, "auto").strip().lower() or "auto"
    if pin not in ("auto", "gpu", "cpu"):
        raise InputError(f"{PIN_ENV} must be auto, gpu or cpu, got {pin!r}")
    if pin == "auto":
        choice = measure_decoding(dataset, device, workers)
    else:
        choice = DecodeChoice(pin == "gpu", 0.0, 0.0, workers, 0, pinned=True)
    if choice is None:
        return None
    _CHOICES[key] = choice
    _say(choice, key[0])
    return choice


def _say(choice: DecodeChoice, device: str) -> None:
    where = f"decoded on {device}" if choice.on_device else "decoded by the CPU loader"
    if choice.pinned:
        log.info("evaluation images: %s (set by %s)", where, PIN_ENV)
        return
    readers = (
        f"{choice.workers} loader process{'' if choice.workers == 1 else 'es'}"
        if choice.workers
        else f"{reading_threads()} reading threads"
    )
    log.info(
        "evaluation images: %s (nvJPEG on %s: %.0f images/s; Pillow in %s: ~%.0f "
        "images/s; measured on %d working copies; %s=gpu or cpu fixes the choice)",
        where,
        device,
        choice.device_images_per_s,
        readers,
        choice.cpu_images_per_s,
        choice.sample,
        PIN_ENV,
    )


def choices() -> list[DecodeChoice]:
    """The choices made in this process so far (benchmarks record them)."""
    return list(_CHOICES.values())


def measure_decoding(
    dataset, device: str | torch.device, workers: int, sample: int = SAMPLE_IMAGES
) -> DecodeChoice | None:
    """Time both input paths on up to ``sample`` working copies spread over
    ``dataset``: one batched decode plus tensor transform on ``device`` (after one
    warm-up call), and Pillow decode plus the dataset's own transform on this core,
    times the loader processes (or, with none, the reading threads) that share the
    work. A failure on the device is said once and chooses the CPU loader."""
    device = torch.device(device)
    inner, indices = unwrap(dataset)
    transform = tensor_transform(inner)
    datas = _sample_copies(inner, indices, sample)
    if not datas or transform is None:
        return None

    def on_device() -> None:
        for img in decode_jpegs(datas, device):
            transform(img)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    readers = workers if workers > 0 else reading_threads()
    try:
        on_device()  # warm-up: decoder handles, kernels, the allocator
        start = time.perf_counter()
        on_device()
        device_ips = len(datas) / max(time.perf_counter() - start, 1e-9)
    except Exception as exc:  # out of memory, a decoder that fails on these files, ...
        log.warning(
            "decoding working copies on %s failed while measuring it (%s); the CPU loader is used",
            device,
            _describe(exc),
        )
        return DecodeChoice(False, 0.0, 0.0, workers, len(datas))
    start = time.perf_counter()
    for data in datas:
        inner.transform(decode_copy(data, "a working copy", inner.channels))
    cpu_ips = len(datas) / max(time.perf_counter() - start, 1e-9) * readers
    return DecodeChoice(device_ips >= cpu_ips, device_ips, cpu_ips, workers, len(datas))


def _sample_copies(inner, indices: list[int] | None, sample: int) -> list[bytes]:
    """Up to ``sample`` working copies' bytes, from images spread evenly over the
    data set (class folders are often in order); unreadable images are skipped."""
    order = indices if indices is not None else range(len(inner))
    looked = min(len(order), 4 * sample)
    reader = EncodedDataset(inner)
    datas = []
    for k in range(looked):
        try:
            data, _, _ = reader[order[k * len(order) // looked]]
        except InputError:
            continue
        if data is not None:
            datas.append(data)
        if len(datas) == sample:
            break
    return datas


def unwrap(dataset) -> tuple[object, list[int] | None]:
    """``(the dataset under any Subsets, the indices into it they select)``; the
    indices are ``None`` when ``dataset`` is not a ``Subset``."""
    indices = None
    while isinstance(dataset, torch.utils.data.Subset):
        mine = list(dataset.indices)
        indices = mine if indices is None else [mine[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def encoded(dataset) -> torch.utils.data.Dataset:
    """``dataset`` as the GPU path reads it: an ``EncodedDataset`` over the
    ``ImageDataset`` underneath, in a ``Subset`` with the same indices if it was one."""
    inner, indices = unwrap(dataset)
    out = EncodedDataset(inner)
    return out if indices is None else torch.utils.data.Subset(out, indices)


def tensor_transform(dataset) -> TensorEvalTransform | None:
    """The GPU equivalent of ``dataset``'s evaluation transform, or ``None`` when it
    has none (training augmentation, 1 channel, another crop mode, no transform)."""
    dataset, _ = unwrap(dataset)
    cfg = getattr(getattr(dataset, "transform", None), "config", None)
    if getattr(dataset, "side", None) is None or not isinstance(cfg, dict):
        return None
    if cfg.get("train") or cfg.get("crop_mode") != "center" or cfg["input_size"][0] != 3:
        return None
    if cfg.get("interpolation") not in ("bicubic", "bilinear"):
        return None
    return TensorEvalTransform(cfg)


def _decoder_works(device: torch.device) -> bool:
    key = str(device)
    if key not in _DECODE_OK:
        try:
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "JPEG")
            decode_jpegs([buf.getvalue(), buf.getvalue()], device)
            _DECODE_OK[key] = True
        except Exception as exc:  # no nvJPEG in this build, too old a torchvision, ...
            _DECODE_OK[key] = False
            log.warning(
                "decoding JPEGs on %s failed (%s); images are decoded on the CPU "
                "instead (batched GPU decoding needs torchvision 0.20 or later with CUDA)",
                key,
                _describe(exc),
            )
    return _DECODE_OK[key]


def decoding_on(device: str | torch.device) -> bool | None:
    """Whether JPEGs were found to decode on ``device`` (``None``: not tried yet)."""
    return _DECODE_OK.get(str(torch.device(device)))


def decode_jpegs(datas: Sequence[bytes], device: str | torch.device) -> list[torch.Tensor]:
    """JPEG file bytes -> uint8 (3, H, W) tensors on ``device``, as one batched call.

    (torchvision 0.29 announces that its decoders will move to TorchCodec; until
    then this is the batched nvJPEG entry point, and the notice is not repeated.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        device = torch.device(device)
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        if device.type == "cuda":
            # torchvision's nvJPEG decoder runs on its own stream; work queued on the
            # current one must be finished first, or it may read unwritten memory.
            torch.cuda.current_stream(device).synchronize()
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))


class TensorEvalTransform:
    """Resize (shorter side to ``size / crop_pct``, antialiased), centre crop and
    normalise a uint8 (3, H, W) tensor on whatever device it is on: the evaluation
    transform of ``create_transform`` for tensors."""

    def __init__(self, cfg: dict):
        _, self.h, self.w = (int(v) for v in cfg["input_size"])
        self.scale = tuple(math.floor(s / cfg["crop_pct"]) for s in (self.h, self.w))
        self.mode = cfg["interpolation"]
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(3, 1, 1) * 255.0
        self.std = torch.tensor(cfg["std"], dtype=torch.float32).view(3, 1, 1) * 255.0
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _moments(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std on ``device``, copied there once."""
        if device not in self._on:
            self._on[device] = (self.mean.to(device), self.std.to(device))
        return self._on[device]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """(3, H, W) -> (3, h, w), or a same-sized (N, 3, H, W) batch -> (N, 3, h, w)."""
        if img.dim() == 4:
            return self._batch(img)
        return self._batch(img[None])[0]

    def _batch(self, img: torch.Tensor) -> torch.Tensor:
        _, _, h, w = img.shape
        if self.h == self.w:  # like T.Resize(int): the shorter side, aspect kept
            short = self.scale[0]
            size = (short, max(1, int(short * w / h))) if h <= w else (int(short * h / w), short)
        else:
            size = self.scale
        x = F.interpolate(
            img.float(), size=size, mode=self.mode, antialias=True, align_corners=False
        )
        x = x.clamp_(0, 255).round_()  # PIL resizes to 8-bit pixels
        top = round((size[0] - self.h) / 2.0)
        left = round((size[1] - self.w) / 2.0)
        x = x[:, :, top : top + self.h, left : left + self.w]
        mean, std = self._moments(x.device)
        return (x - mean) / std


class EncodedDataset(torch.utils.data.Dataset):
    """An ``ImageDataset`` whose items are ``(jpeg bytes or None, tensor or None,
    label)``: the working copy's bytes for large images (decoded later, on the GPU),
    else the CPU-transformed tensor."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int]) -> list:
        """A batch's items, on the reading threads when this is the main process (no
        loader processes): a missing copy is made from its original on every core."""
        if len(indices) < 2 or torch.utils.data.get_worker_info() is not None:
            return [self[i] for i in indices]
        return list(reading_pool().map(self.__getitem__, indices))

    def __getitem__(self, index: int):
        ds = self.dataset
        ex = ds.examples[index]
        img, data = load_working_bytes(ex.path, ex.digest, ds.side, ds.copies)
        if data is not None:
            return data, None, ex.label
        return None, ds.transform(to_channels(img, ds.channels)), ex.label


def collate_encoded(items):
    """Keep bytes as a list (they differ in length); labels as one tensor."""
    datas = [d for d, _, _ in items]
    tensors = [t for _, t, _ in items]
    return datas, tensors, torch.tensor([label for _, _, label in items])


def to_batch(
    batch, transform: TensorEvalTransform, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One collated batch as ``(images on device, labels)``: JPEGs decoded in one
    call on ``device``, CPU tensors copied from pinned memory without blocking."""
    datas, tensors, labels = batch
    out: list[torch.Tensor | None] = [None] * len(datas)
    jpeg_at = [i for i, d in enumerate(datas) if d is not None]
    if jpeg_at:
        decoded = decode_jpegs([datas[i] for i in jpeg_at], device)
        by_shape: dict[tuple, list[int]] = {}  # copies of same-aspect photos: one call
        for k, img in enumerate(decoded):
            by_shape.setdefault(tuple(img.shape), []).append(k)
        for ks in by_shape.values():
            done = transform(torch.stack([decoded[k] for k in ks]))
            for row, k in enumerate(ks):
                out[jpeg_at[k]] = done[row]
    cpu_at = [i for i, t in enumerate(tensors) if t is not None]
    if cpu_at:  # small images: one pinned buffer, one copy
        stacked = torch.stack([tensors[i] for i in cpu_at])
        if device.type == "cuda":
            stacked = stacked.pin_memory()
        stacked = stacked.to(device, non_blocking=True)
        for row, i in enumerate(cpu_at):
            out[i] = stacked[row]
    return torch.stack(out), labels.to(device, non_blocking=True)
