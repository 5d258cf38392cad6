"""Tiny models and configs shared by tests (importable: pytest puts tests/ on the path)."""

from __future__ import annotations

import torch
from torch import nn


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
