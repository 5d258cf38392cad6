"""On a CUDA GPU: ``fit`` end to end (feature extraction, and a one-epoch fine-tune,
each in fp32 and bf16), ``predict`` and ``export`` of a run trained there, each
checked against the same fit on the CPU within the rounding the precision allows.

Skipped without a CUDA GPU; ``bench/gpu_check.sh`` runs them on one (``pytest -m
gpu``). TRANSFERKIT_TEST_GPU_DEVICE=cpu runs them with the CPU in the GPU's place, to
check the tests themselves on a machine without one.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from helpers import make_image_folder
from transferkit.estimator import TransferClassifier
from transferkit.export import export_run
from transferkit.predict import load_predictor

DEVICE = os.environ.get("TRANSFERKIT_TEST_GPU_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (bench/gpu_check.sh runs these on one)",
    ),
]

RUN = {
    "weights": "none",
    "image_size": 32,
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "head_epochs": 20,
    "patience": 5,
    "fine_tune_epochs": 1,
    "batch_size": 8,
    "workers": 0,
    "seed": 0,
    "augment": False,
}
# largest difference of a validation probability from the CPU fp32 run's: TF32
# convolutions (cuDNN's default) round features at about 1e-3, bf16 at about 1e-2
TOLERANCE = {"fp32": 0.02, "bf16": 0.06}
FITS = [(s, p) for s in ("feature-extract", "fine-tune") for p in ("fp32", "bf16")]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("gpu-data"), per_class=10, size=32)


@pytest.fixture(scope="module")
def fitted(photos, tmp_path_factory):
    """fit(strategy, device, precision) -> the classifier and its run folder, each
    fit made once per module."""
    runs = {}

    def fit(strategy: str, device: str, precision: str):
        key = (strategy, device, precision)
        if key not in runs:
            root = tmp_path_factory.mktemp(f"{strategy}-{device}-{precision}")
            clf = TransferClassifier(
                "test_resnet",
                strategy,
                device=device,
                precision=precision,
                cache_dir=str(root / "cache"),
                **RUN,
            )
            clf.fit(photos, run_dir=root / "run")
            runs[key] = (clf, root / "run")
        return runs[key]

    return fit


def _val_probabilities(clf) -> tuple[list[str], np.ndarray]:
    rows = [r for r in clf.predictions_ if r["split"] == "val"]
    return [r["path"] for r in rows], np.array([r["probs"] for r in rows])


def _agree(reference: np.ndarray, other: np.ndarray, tol: float) -> None:
    """Probabilities within ``tol``; the same top-1 wherever the reference's top two
    classes are further apart than the rounding could move them."""
    assert reference.shape == other.shape
    assert np.abs(reference - other).max() <= tol
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
    assert clear.any(), "no validation image is predicted clearly enough to compare"
    assert (reference.argmax(1)[clear] == other.argmax(1)[clear]).all()


@pytest.mark.parametrize(("strategy", "precision"), FITS)
def test_a_fit_on_the_gpu_agrees_with_the_same_fit_on_the_cpu(fitted, strategy, precision):
    cpu, _ = fitted(strategy, "cpu", "fp32")
    gpu, run = fitted(strategy, DEVICE, precision)
    assert re.search(
        rf"backbone test_resnet, {DEVICE}(:\d+)? {precision}", (run / "train.log").read_text()
    )
    assert [h["phase"] for h in gpu.history_][-1] == (
        "fine-tune" if strategy == "fine-tune" else "head"
    )
    paths, reference = _val_probabilities(cpu)
    assert _val_probabilities(gpu)[0] == paths
    _agree(reference, _val_probabilities(gpu)[1], TOLERANCE[precision])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predict_on_the_gpu_gives_the_runs_own_validation_predictions(fitted, precision):
    clf, run = fitted("fine-tune", DEVICE, precision)
    paths, recorded = _val_probabilities(clf)
    on_gpu = load_predictor(run, device=DEVICE).predict_proba_files(paths)
    on_cpu = load_predictor(run, device="cpu").predict_proba_files(paths)
    assert on_gpu[0] == on_cpu[0] == paths
    # predict runs fp32: the same model on either device, TF32 rounding apart
    _agree(on_cpu[1], on_gpu[1], TOLERANCE["fp32"])
    _agree(recorded, on_gpu[1], TOLERANCE[precision])


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_a_run_trained_on_the_gpu_exports_and_predicts_like_the_run(fitted, tmp_path, suffix):
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")
    clf, run = fitted("fine-tune", DEVICE, "bf16")
    result = export_run(run, tmp_path / f"model{suffix}")  # checked against torch on export
    assert result.max_abs_diff <= result.bound
    paths, _ = _val_probabilities(clf)
    exported = load_predictor(result.path).predict_proba_files(paths)
    from_run = load_predictor(run, device="cpu").predict_proba_files(paths)
    _agree(from_run[1], exported[1], 1e-3)
