"""A joined cut (``--cut blocks.1+blocks.2``): the average-pooled features of several
layers side by side, trained, saved, reloaded and exported like any other cut."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from helpers import FAST_FIT
from transferkit.backbones import create_backbone
from transferkit.backbones.base import recut_module_backbone
from transferkit.errors import InputError
from transferkit.estimator import TransferClassifier
from transferkit.export import export_run
from transferkit.predict import load_predictor
from transferkit.runs import load_run


def _cut(full, cut):
    return recut_module_backbone(copy.deepcopy(full), cut).eval()


def test_joined_features_are_each_layers_pooled_features_side_by_side():
    full = create_backbone("test_efficientnet", weights="none").eval()
    joined = _cut(full, "blocks.2+blocks.1")  # any order: input to output
    assert joined.cut == "blocks.1+blocks.2"
    assert [name for name, _ in joined.blocks][-1] == "blocks.2"  # the base ends there
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        parts = [_cut(full, c)(x).mean((2, 3)) for c in ("blocks.1", "blocks.2")]
        got = joined(x)
    assert joined.feature_shape == (got.shape[1],) == (sum(p.shape[1] for p in parts),)
    torch.testing.assert_close(got, torch.cat(parts, dim=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("cut", "says"),
    [("blocks.1+blocks.1", "names one layer twice"), ("blocks.1+blokcs.2", "blocks.2")],
)
def test_a_bad_joined_cut_is_a_one_line_error_naming_it(cut, says):
    with pytest.raises(InputError, match=says):
        create_backbone("test_efficientnet", weights="none", cut=cut)


def test_a_fit_at_a_joined_cut_fine_tunes_saves_reloads_and_exports(data, tmp_path):
    clf = TransferClassifier(
        "test_efficientnet",
        "fine-tune",
        weights="none",
        cut="blocks.1+blocks.2",
        cache_dir=str(tmp_path / "cache"),
        **FAST_FIT,
    ).fit(data, run_dir=tmp_path / "run")
    assert clf.config_.cut == "blocks.1+blocks.2"
    files = sorted(str(p) for p in data.rglob("*.png"))[:6]
    reloaded = load_predictor(tmp_path / "run").predict(files, top_k=1)
    assert [p.label for p in reloaded.predictions] == clf.predict(files)
    onnx = export_run(tmp_path / "run", tmp_path / "model.onnx")
    model = load_run(tmp_path / "run").model
    session = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-4)
