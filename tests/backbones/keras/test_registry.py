"""Keras backbones in the loader registry: the recorded loader, rebuilding a run's
Keras backbone from its record, and re-cutting one without copying it (a Keras model
does not deep-copy: it holds a module object, which does not pickle)."""

from __future__ import annotations

import shutil

import pytest
import torch

from transferkit import create_backbone
from transferkit.backbones import rebuild_backbone, recut_backbone


def _layer_output(keras, backbone, layer: str, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s output in the backbone's Keras model, channels first like features."""
    model = backbone.keras_model
    sub = keras.Model(model.inputs[0], model.get_layer(layer).output)
    with torch.no_grad():
        y = sub(x.permute(0, 2, 3, 1), training=False)
    return y.permute(0, 3, 1, 2) if y.dim() == 4 else y


def _features(backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval().forward_features(x)


@pytest.fixture
def saved_model(keras_files, tmp_path):
    """A private copy of the saved ``.keras`` model, free to delete."""
    return shutil.copy(keras_files["keras"], tmp_path / "convnet.keras")


def test_keras_specs_and_models_record_the_keras_loader(keras_files, make_convnet):
    assert create_backbone(str(keras_files["keras"]), cut="relu1").describe()["loader"] == "keras"
    assert create_backbone(make_convnet(), cut="relu1").describe()["loader"] == "keras"


def test_recut_of_a_saved_model_loaded_without_a_cut_down_to_an_inner_layer(keras, saved_model):
    bb = create_backbone(str(saved_model))  # no cut: the classifier's output
    x = torch.rand(2, 3, 16, 16)
    expected = _layer_output(keras, bb, "relu2", x)
    recut = recut_backbone(bb, "relu2")
    assert recut.cut == "relu2" and recut.cut_points == ["relu1", "relu2"]
    assert recut.feature_shape == (4, 16, 16) and recut.keras_output_shape == (16, 16, 4)
    assert torch.allclose(_features(recut, x), expected, atol=1e-6)
    # still the saved model, so a run of it is recorded (and rebuilt) as one
    assert (recut.spec, recut.kind, recut.source) == (bb.spec, "file", bb.source)
    assert recut.describe()["keras"]["file"] == str(saved_model.resolve())
    assert recut_backbone(recut, "relu2") is recut


def test_recut_to_a_vector_layer_and_then_lower(keras, saved_model):
    bb = create_backbone(str(saved_model))
    x = torch.rand(1, 3, 16, 16)
    expected = _layer_output(keras, bb, "relu1", x)
    flat = recut_backbone(bb, "flatten_1")
    assert flat.feature_shape == (512,) and flat.num_features == 512
    lower = recut_backbone(flat, "relu1")
    assert torch.allclose(_features(lower, x), expected, atol=1e-6)


def test_saved_model_backbone_rebuilds_from_its_record_without_the_file(saved_model):
    bb = recut_backbone(create_backbone(str(saved_model)), "relu2")
    record = bb.describe()
    saved_model.unlink()
    again = rebuild_backbone(record)
    assert (again.loader, again.kind, again.spec, again.cut) == ("keras", "file", bb.spec, "relu2")
    again.load_state_dict(bb.state_dict())
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(_features(again, x), _features(bb, x), atol=1e-6)


def test_keras_records_without_a_loader_still_rebuild(keras_files, make_convnet):
    record = create_backbone(str(keras_files["keras"]), cut="relu1").describe()
    del record["loader"]
    assert rebuild_backbone(record).cut == "relu1"
    record = create_backbone(make_convnet(), cut="relu2").describe()
    del record["loader"]
    assert rebuild_backbone(record, make_convnet()).cut == "relu2"


def test_application_recut_and_rebuild_keep_the_application(keras):
    bb = create_backbone("keras:MobileNet,size=32", weights="none")
    recut = recut_backbone(bb, "conv_pw_1_relu")
    assert recut.kind == "application" and recut.spec == "keras:MobileNet,size=32"
    assert recut.feature_shape == (64, 16, 16)
    record = recut.describe()
    assert "model_config" not in record["keras"]  # rebuilt from its spec, not a config
    again = rebuild_backbone(record)
    assert again.cut == "conv_pw_1_relu" and again.kind == "application"
    again.load_state_dict(recut.state_dict())
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(_features(again, x), _features(recut, x), atol=1e-6)
