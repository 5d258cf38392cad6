"""Shared test fixtures: tiny models and images, seconds each."""

from __future__ import annotations

import pytest
import torch

from helpers import TinyNet, Trained, make_image_folder, red_image

FAST_RUN = {
    "weights": "none",
    "image_size": 16,
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "epochs": 6,
    "patience": 3,
    "fine_tune_epochs": 1,
    "batch_size": 8,
    "workers": 0,
    "seed": 0,
}


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    """One tiny fine-tuned run shared by the tests of what a run gives (predict,
    evaluate, export, report): three colour classes at 16 px in train/ + test/, plus
    one deliberately mislabelled test image (a red picture filed under ``blue``) so
    the run has a confident mistake. Tests that damage files work on a copy."""
    from transferkit.estimator import TransferClassifier

    root = tmp_path_factory.mktemp("results")
    data = make_image_folder(root / "data", per_class=6, size=16, layout="splits", test_per_class=3)
    red_image(data / "test" / "blue" / "mislabelled.png")
    run = root / "run"
    clf = TransferClassifier("test_resnet", "fine-tune", cache_dir=str(root / "cache"), **FAST_RUN)
    clf.fit(data, run_dir=run)
    return Trained(data, run, list(clf.classes_))
