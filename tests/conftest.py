"""Shared test fixtures: tiny models and images, seconds each."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in one process per core (pytest-xdist). Each gets its
    # share of the cores: torch's default of a thread per core in every process
    # oversubscribes the machine (2 processes on 2 cores: 92 s, against 43 s with one
    # thread each). Set before torch is imported, so its thread pool is sized once.
    _share = (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

import pytest
import torch

from helpers import TinyNet, Trained, make_image_folder, red_image

FAST_RUN = {
    "weights": "none",
    "image_size": 16,
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "head_epochs": 6,
    "patience": 3,
    "fine_tune_epochs": 1,
    "batch_size": 8,
    "workers": 0,
    "seed": 0,
}


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """The caches (features, decisions, data scans) live in the session's temporary
    folder: tests never touch ~/.cache, and parallel test processes never share one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache-home")))
        yield


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """Three colour classes, 6 images each, 16 px: learnable in seconds. Read only."""
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=6, size=16)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Five images per class: small data, as the advisor counts it. Read only."""
    return make_image_folder(tmp_path_factory.mktemp("five"), per_class=5, size=16)


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


def pytest_collection_finish(session):
    """Keep the garbage collector off what the imports created (torch, timm, keras:
    hundreds of thousands of objects that live as long as the test process), as the
    `transferkit` command does: full collections during the tests, and the one at
    exit, no longer scan them."""
    import gc

    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first: with the suite spread over processes, the long
    ones start early instead of finishing last on one process while the others idle."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
