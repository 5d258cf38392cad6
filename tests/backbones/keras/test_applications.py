"""``keras:NAME`` backbones: ``keras.applications`` with ``include_top=False``, the
classic Keras tutorial's InceptionV3 cut at ``mixed7``, each family's own preprocessing,
weights."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit import WeightsUnavailableError, create_backbone, summary
from transferkit.backbones.keras_loader import APPLICATIONS, PREPROCESS_MODES, keras_data_config
from transferkit.data import create_transform
from transferkit.heads import HeadConfig, create_head


@pytest.fixture(scope="module")
def inception_mixed7(keras):
    return create_backbone("keras:InceptionV3,size=150", weights="none", cut="mixed7")


@pytest.mark.slow
def test_inception_v3_at_150px_cut_at_mixed7_is_7x7x768(inception_mixed7):
    bb = inception_mixed7
    assert bb.keras_output_shape == (7, 7, 768)  # as the tutorial's model.summary() shows
    assert bb.feature_shape == (768, 7, 7) and bb.num_features == 768
    assert bb.cut == "mixed7" and bb.cut_points[-1] == "mixed7"
    assert [f"mixed{i}" for i in range(8)] == [c for c in bb.cut_points if c.startswith("mixed")]
    assert bb.data_config["input_size"] == (3, 150, 150)
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5)  # "tf": x / 127.5 - 1
    with torch.no_grad():
        assert bb.eval().forward_features(torch.zeros(2, 3, 150, 150)).shape == (2, 768, 7, 7)
    km = bb.keras_model
    s = summary(bb)
    assert (s.weights, s.trainable_weights, s.non_trainable_weights) == (
        len(km.weights),
        len(km.trainable_weights),
        len(km.non_trainable_weights),
    )
    # The tutorial's head: Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid)
    head = create_head(bb.feature_shape, 2, HeadConfig("flatten", hidden=1024, dropout=0.2))
    assert head.in_features == 7 * 7 * 768 and head.binary


@pytest.mark.slow
def test_same_application_twice_gives_the_same_names(keras, inception_mixed7):
    again = create_backbone("keras:InceptionV3,size=150", weights="none", cut="mixed7")
    assert again.cut_points == inception_mixed7.cut_points
    assert list(again.state_dict()) == list(inception_mixed7.state_dict())
    assert again.keras_model.layers[1].name == "conv2d"  # not conv2d_94


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_preprocessing_matches_keras_preprocess_input(keras, name):
    """transferkit's transform + the module's channel flip give what the application's
    own ``preprocess_input`` gives, for every family."""
    mode, _ = APPLICATIONS[name]
    module = sys.modules[getattr(keras.applications, name).__module__]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    expected = np.asarray(module.preprocess_input(pixels.astype(np.float32)[None].copy()))[0]
    config = keras_data_config(mode, (6, 6), 3)
    ours = create_transform(config, train=False)(Image.fromarray(pixels))
    ours = ours.permute(1, 2, 0).numpy()
    if PREPROCESS_MODES[mode][2]:
        ours = ours[..., ::-1]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=2e-4)


def test_local_weights_file(keras, tmp_path):
    a = create_backbone("keras:MobileNet,size=32", weights="none")
    a.keras_model.save_weights(tmp_path / "mobilenet.weights.h5")
    b = create_backbone("keras:MobileNet,size=32", weights=str(tmp_path / "mobilenet.weights.h5"))
    assert b.weights_digest == a.weights_digest
    assert "file:" in b.source


def test_imagenet_weights_offline_give_a_clear_error(keras, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*_args, **_kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: offline")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError, match=r"--weights PATH.*or --weights none"):
        create_backbone("keras:MobileNet,size=128")


def test_application_names_are_case_insensitive_and_keep_their_spec(keras):
    bb = create_backbone("keras:mobilenet,size=32", weights="none", cut="conv_pw_1_relu")
    assert bb.name == "MobileNet" and bb.spec == "keras:mobilenet,size=32"
    assert bb.cut_points == ["conv1_relu", "conv_dw_1_relu", "conv_pw_1_relu"]
    assert bb.describe()["keras"]["kind"] == "application"
