"""Torch side of the data layer: a Dataset over examples, and a well-configured loader.

Why a factory for the loader: the settings that make decoding keep up with the model
(worker processes, pinned memory on GPU, persistent workers, one torch thread per
worker) are easy to forget and easy to get wrong; ``create_loader`` sets them once.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import InputError
from .build import Example
from .copies import CopyCache, load_working, side_for
from .gpu import (
    choose_decoding,
    collate_encoded,
    encoded,
    gpu_decodable,
    tensor_transform,
    to_batch,
)
from .images import open_image
from .reading import reading_pool


class ImageDataset(Dataset):
    """``(tensor, label)`` pairs from examples, opened the same way the scanner checked.

    With a ``create_transform`` transform, an image larger than the transform needs
    is read from its working copy (``copies.py``: made once, by the scan or on first
    use, and keyed by the example's content digest), so each large original is
    decoded once per data set rather than once per epoch.

    Args:
        examples: usable examples (``DatasetSplits.train`` etc.).
        transform: PIL image -> tensor, usually ``create_transform(...)``; ``None``
            gives unnormalised [0, 1] tensors of the full-size originals.
        channels: 1 or 3; default: the transform's ``channels``, else 3.
        copies: the working-copy cache; default ``CopyCache()`` (under
            ``cache_root()``); ``CopyCache(enabled=False)`` makes copies in memory
            only, each time.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        transform: Callable | None = None,
        channels: int | None = None,
        copies: CopyCache | None = None,
    ):
        self.examples = list(examples)
        self.transform = transform
        self.channels = channels or getattr(transform, "channels", 3)
        if self.channels not in (1, 3):
            raise InputError(f"channels must be 1 or 3, got {self.channels!r}")
        self.side = side_for(transform)
        self.copies = copies if copies is not None else CopyCache()

    def __len__(self) -> int:
        return len(self.examples)

    def open(self, index: int):
        """The PIL image of example ``index`` that the transform is applied to."""
        ex = self.examples[index]
        if self.side is None:
            return open_image(ex.path, channels=self.channels)
        return load_working(ex.path, ex.digest, self.side, self.channels, self.copies)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch's items; the loader asks for them together (torch's batched fetch).

        Where the result cannot depend on the order (an evaluation transform, no
        random draws) and this is the main process, the items are read on a few
        threads: decoding and resizing release the GIL, so with no loader
        processes (the default on a CPU) a batch is read on every core instead of
        one, while the model waits for it. Augmenting transforms stay on one thread
        so that a seed repeats the same augmentations.
        """
        if len(indices) < 2 or not self._order_free() or get_worker_info() is not None:
            return [self[i] for i in indices]
        return list(reading_pool().map(self.__getitem__, indices))

    def _order_free(self) -> bool:
        if self.transform is None:
            return True
        return getattr(self.transform, "config", {}).get("train") is False

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        ex = self.examples[index]
        img = self.open(index)
        if self.transform is None:
            arr = np.asarray(img, dtype=np.float32) / 255.0
            x = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
        else:
            x = self.transform(img)
        return x, ex.label

    @property
    def labels(self) -> list[int]:
        return [ex.label for ex in self.examples]


def default_workers(
    n_items: int | None = None, batch_size: int = 64, device: str | torch.device = "cuda"
) -> int:
    """Loader processes ``create_loader`` starts when none are asked for.

    On a GPU: min(8, CPU count / processes on this machine), so decoding and
    augmenting overlap the GPU's work (a core decodes, crops and normalises a
    336 px working copy in ~4-6 ms: eight feed ~1,500 training images/s;
    evaluation batches are decoded on the GPU itself, so there the workers only
    read bytes). On a CPU device:
    0. The model's own threads already use every core there, so worker processes only
    take cores from it, and torch's thread pool stalls whenever one of its threads is
    descheduled: fine-tuning efficientnet_lite0 on 800 Fashion-MNIST images (2 cores,
    96 px, batch 32) took 6.5-7.1 s an epoch with 2 workers, 4.3-4.7 s with none.
    Also 0 when everything fits in one batch (workers would only add start-up time).
    """
    if n_items is not None and n_items <= batch_size:
        return 0
    if torch.device(device).type == "cpu":
        return 0
    # torchrun starts one process per GPU on a machine: they share its cores (those
    # this process may run on, which a container or taskset may limit).
    try:
        sharing = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        sharing = 1
    return max(1, min(8, _usable_cores() // sharing))


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def create_loader(
    dataset: Dataset,
    *,
    batch_size: int = 64,
    shuffle: bool = False,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader set up so decoding is not the bottleneck.

    Args:
        dataset: usually an ``ImageDataset``.
        batch_size: images per batch.
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given).
        workers: loader processes; ``None`` = ``default_workers`` (0 on a CPU device;
            min(8, CPUs) on a GPU unless the dataset fits in one batch).
        device: where batches go; pinned memory is used for CUDA.
        seed: seeds shuffling and each worker's augmentation RNGs, so runs repeat.
        sampler: e.g. a ``DistributedSampler`` or class-balanced sampler.
        drop_last: drop a last incomplete batch (keeps BatchNorm heads stable).

    On a CUDA device, an ``ImageDataset`` with an evaluation transform is decoded on
    the GPU (``gpu.py``) when a measurement on a sample of its working copies finds
    that faster than the loader processes: workers then only read the copies' bytes,
    and each batch is decoded, resized and normalised there in one go. Batches then
    arrive on the device already.

    Example:
        >>> loader = create_loader(ImageDataset(data.train, tf), shuffle=True)  # doctest: +SKIP
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size!r}")
    n = len(dataset) if hasattr(dataset, "__len__") else None
    workers = default_workers(n, batch_size, device) if workers is None else int(workers)
    if workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    pin = torch.device(device).type == "cuda" and torch.cuda.is_available()
    settings = dict(
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_init_worker if workers else None,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    if gpu_decodable(dataset, device) and _decode_on_device(dataset, device, workers):
        settings.update(pin_memory=False, collate_fn=collate_encoded)
        return _GpuDecodeLoader(
            encoded(dataset), tensor_transform(dataset), torch.device(device), **settings
        )
    return _Loader(dataset, **settings)


def _decode_on_device(dataset, device, workers: int) -> bool:
    """The measured choice (``gpu.choose_decoding``); with no copies to measure on,
    the device path (it then only carries CPU tensors, as the CPU loader would)."""
    choice = choose_decoding(dataset, device, workers)
    return choice is None or choice.on_device


class _Loader(DataLoader):
    """A DataLoader whose errors stay one line.

    A file that breaks after the scan (deleted, truncated) raises ``InputError`` in a
    worker process; torch re-raises it in the main process with the worker's whole
    traceback in the message, which the CLI would print. Here it is re-raised with the
    original one-line message.
    """

    def __iter__(self):
        return _OneLineErrors(super().__iter__())


class _GpuDecodeLoader(_Loader):
    """Batches of working-copy bytes, decoded and transformed on ``device``."""

    def __init__(self, dataset, transform, device: torch.device, **settings):
        super().__init__(dataset, **settings)
        self.tensor_transform = transform
        self.device = device

    def __iter__(self):
        return (to_batch(b, self.tensor_transform, self.device) for b in super().__iter__())


class _OneLineErrors:
    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._it)

    def __next__(self):
        try:
            return next(self._it)
        except InputError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            last = text.rstrip().splitlines()[-1]
            raise InputError(last.split("InputError: ", 1)[-1]) from None


def _init_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random need
    # the same, or every worker repeats the same "random" augmentations.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # Workers run in parallel already: one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
