"""One tiny trained run shared by the results tests (built once per session, ~10 s).

The data is the helpers' three colour classes at 16 px in train/ + test/ layout, plus
one deliberately mislabelled test image (a red picture filed under ``blue``) so the run
has a confident mistake for the report's grid. Tests that damage files work on a copy.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder
from transferkit.estimator import TransferClassifier
from transferkit.runs import PREDICTIONS, predictions_csv

FAST = {
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


@dataclass
class Trained:
    data: Path
    run: Path
    classes: list[str]

    def copy(self, dest: Path) -> Path:
        """A copy of the run directory to damage or rebuild without touching the shared one."""
        return Path(shutil.copytree(self.run, dest))


def red_image(path: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    pixels = np.array([200, 30, 30], dtype=np.float32) + rng.normal(0, 20, (16, 16, 3))
    Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(path)
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("results")
    data = make_image_folder(root / "data", per_class=6, size=16, layout="splits", test_per_class=3)
    red_image(data / "test" / "blue" / "mislabelled.png")
    run = root / "run"
    clf = TransferClassifier("resnet18", "fine-tune", cache_dir=str(root / "cache"), **FAST)
    clf.fit(data, run_dir=run)
    if not (run / PREDICTIONS).is_file():
        # Until fit writes predictions.csv itself, write it from what fit computed.
        (run / PREDICTIONS).write_text(predictions_csv(clf.predictions_, clf.classes_))
    return Trained(data, run, list(clf.classes_))
