"""Shared test fixtures: tiny models and images, seconds each."""

from __future__ import annotations

import pytest
import torch

from helpers import TinyNet


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()
