"""Tiny models and configs shared by tests (importable: pytest puts tests/ on the path)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.freezing import create_optimizer
from transferkit.training import Objective, PhaseConfig, PhaseData, fit_phase


class TinyNet(nn.Module):
    """A small conv net with named stages, BN and a classifier: enough structure for
    cutting, block discovery, freezing and BN policy tests."""

    def __init__(self, channels: int = 3, classes: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(channels, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.stem_bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


TINY_CONFIG = {
    "input_size": (3, 16, 16),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def make_image_folder(
    root,
    classes=("red", "green", "blue"),
    per_class=8,
    size=16,
    seed=0,
    layout="flat",
    test_per_class=0,
):
    """Write a learnable tiny PNG dataset: each class has its own dominant colour plus
    noise. ``layout="flat"``: ROOT/CLASS/*.png; ``"splits"``: ROOT/train|test/CLASS."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]

    def write(folder, ci, n, offset):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = np.array(colours[ci % len(colours)], dtype=np.float32)
            img = base + rng.normal(0, 40, (size, size, 3))
            Image.fromarray(img.clip(0, 255).astype("uint8")).save(folder / f"img{offset + i}.png")

    for ci, name in enumerate(classes):
        if layout == "flat":
            write(root / name, ci, per_class, 0)
        else:
            write(root / "train" / name, ci, per_class, 0)
            if test_per_class:
                write(root / "test" / name, ci, test_per_class, 1000)
    return root


# Few epochs on tiny data: what the fitting tests train with.
FAST_FIT = {
    "image_size": 16,
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "head_epochs": 30,
    "patience": 3,
    "fine_tune_epochs": 2,
    "batch_size": 8,
    "workers": 0,
}


# A phase on a toy problem: 4 features, the class is the sign of the first.
CE = Objective(nn.functional.cross_entropy, lambda z: z.softmax(1))


def problem(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def run_phase(model, x, y, config: PhaseConfig, *, callbacks=(), objective=CE, lr=0.05):
    data = PhaseData(
        train=lambda epoch: [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(y), 16)],
        val=lambda: [(x, y)],
        steps_per_epoch=4,
    )
    optimizer = create_optimizer(model, lr=lr)
    return fit_phase(model, optimizer, data, config, objective, callbacks=callbacks)


@dataclass
class Trained:
    data: Path
    run: Path
    classes: list[str]

    def copy(self, dest: Path) -> Path:
        """A copy of the run directory to damage or rebuild without touching the shared one."""
        return Path(shutil.copytree(self.run, dest))


def red_image(path: Path, seed: int = 1) -> Path:
    """A red 16 px picture (to file under another class: a confident mistake)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.array([200, 30, 30], dtype=np.float32) + rng.normal(0, 20, (16, 16, 3))
    Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(path)
    return path


def blobs(
    n_per_class: int = 50, n_classes: int = 4, dim: int = 8, spread: float = 6.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs whose centres point in different directions, so
    cosine and linear classifiers both separate them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres *= spread / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(size=(len(y), dim)), y


def batches_of(n: int, size: int = 32, batch: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    return list(images.split(batch))
