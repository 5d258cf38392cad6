"""Keras models as backbones: specs, cuts, layout, Keras's own counts, freezing and
BatchNorm semantics, errors."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from transferkit import (
    InputError,
    MissingDependencyError,
    TransferkitError,
    create_backbone,
    freeze,
    set_bn_policy,
    summary,
    unfreeze,
)
from transferkit.backbones.keras_backbone import KerasBackbone
from transferkit.freezing import trainable_parameters

CUT_POINTS = ["relu1", "relu2", "flatten_1", "dense_1", "dense_out"]


def keras_counts(model) -> tuple[int, int, int]:
    return len(model.weights), len(model.trainable_weights), len(model.non_trainable_weights)


def tk_counts(backbone) -> tuple[int, int, int]:
    s = summary(backbone)
    return s.weights, s.trainable_weights, s.non_trainable_weights


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_saved_model_cut_at_a_named_layer(keras_files, kind):
    bb = create_backbone(str(keras_files[kind]), cut="flatten_1")
    assert isinstance(bb, KerasBackbone)
    assert bb.cut == "flatten_1"
    assert bb.cut_points == CUT_POINTS[:3]  # nothing after the cut remains
    assert [name for name, _ in bb.blocks] == ["relu1", "relu2", "flatten_1"]
    assert bb.keras_output_shape == (512,) and bb.feature_shape == (512,)
    assert bb.num_features == 512
    assert [layer.name for layer in bb.keras_model.layers][-1] == "flatten_1"
    assert "dense_1" not in json.dumps(list(bb.state_dict()))
    assert bb.data_config["input_size"] == (3, 16, 16)


def test_full_model_lists_every_cut_point_and_warns_about_its_classifier(keras_files, caplog):
    bb = create_backbone(str(keras_files["keras"]))
    assert bb.cut_points == CUT_POINTS and bb.cut == "dense_out"
    assert "cut below it, e.g. --cut dense_1" in caplog.text


def test_blocks_never_split_a_conv_from_its_batchnorm_or_a_residual_block(keras_files):
    bb = create_backbone(str(keras_files["keras"]), cut="relu3")
    blocks = {b.name: b.modules for b in bb.all_blocks}
    assert blocks["relu1"] == ("img", "conv1", "bn1", "relu1")
    assert blocks["relu2"] == ("conv2", "bn2", "add", "relu2")  # the skip joins them
    assert blocks["relu3"] == ("conv3", "bn3", "relu3")


def test_unknown_cut_names_close_matches_and_cut_points(keras_files):
    with pytest.raises(InputError, match=r"did you mean: flatten_1.*cut points: relu1, relu2"):
        create_backbone(str(keras_files["keras"]), cut="flatten")


def test_a_joined_cut_of_a_keras_model_is_a_one_line_error(keras_files):
    with pytest.raises(InputError, match=r"'relu2\+relu3' joins layers.*one layer"):
        create_backbone(str(keras_files["keras"]), cut="relu2+relu3")


def test_features_are_keras_outputs_channels_first(keras, keras_files):
    bb = create_backbone(str(keras_files["keras"]), cut="relu3").eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ours = bb.forward_features(x)
        theirs = bb.keras_model(x.permute(0, 2, 3, 1), training=False)
    assert ours.shape == (2, 8, 8, 8) and bb.keras_output_shape == (8, 8, 8)
    assert torch.equal(ours, theirs.permute(0, 3, 1, 2))


def test_caffe_preprocessing_flips_channels_inside_the_module(keras_files):
    bb = create_backbone(str(keras_files["keras"]) + ",preprocess=caffe", cut="relu1").eval()
    assert bb.data_config["std"] == pytest.approx((1 / 255,) * 3)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ours = bb.forward_features(x)
        theirs = bb.keras_model(x.permute(0, 2, 3, 1).flip(-1), training=False)
    assert torch.equal(ours, theirs.permute(0, 3, 1, 2))


def test_counts_match_keras_before_and_after_freezing(keras_files):
    bb = create_backbone(str(keras_files["h5"]), cut="relu3")
    km = bb.keras_model
    assert tk_counts(bb) == keras_counts(km) == (18, 12, 6)
    freeze(bb)
    assert tk_counts(bb) == keras_counts(km) == (18, 0, 18)
    assert not any(p.requires_grad for p in bb.parameters())
    assert unfreeze(bb, top=1) == ["relu3"]
    assert tk_counts(bb) == keras_counts(km) == (18, 4, 14)
    assert len(trainable_parameters(bb)) == len(km.trainable_weights) == 4
    assert [layer.name for layer in km.layers if layer.trainable and layer.weights] == [
        "conv3",
        "bn3",
    ]
    unfreeze(bb)
    assert tk_counts(bb) == keras_counts(km) == (18, 12, 6)


def test_per_layer_counts_are_keras_len_weights(keras_files):
    bb = create_backbone(str(keras_files["keras"]), cut="dense_1")
    freeze(bb.blocks[0][1])
    rows = {r.name.removeprefix("model."): r for r in summary(bb).layers}
    for layer in bb.keras_model.layers:
        if not layer.weights:
            assert layer.name not in rows
            continue
        row = rows[layer.name]
        assert (row.weights, row.trainable_weights, row.non_trainable_weights) == (
            len(layer.weights),
            len(layer.trainable_weights),
            len(layer.non_trainable_weights),
        )
    assert (rows["bn1"].trainable_weights, rows["bn2"].trainable_weights) == (0, 2)
    assert rows["dense_1"].params == 512 * 8 + 8


def test_inspect_shows_keras_layers_shapes_and_counts(keras_files, capsys):
    from transferkit.cli import main

    assert main(["inspect", str(keras_files["keras"]), "--cut", "mixed7"]) == 2
    assert "no such Keras layer" in capsys.readouterr().err
    assert main(["inspect", str(keras_files["keras"]), "--cut", "flatten_1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = [layer["name"] for layer in report["layers"]]
    assert names[:4] == ["img", "conv1", "bn1", "relu1"] and names[-1] == "flatten_1"
    bn1 = report["layers"][names.index("bn1")]
    assert (bn1["weights"], bn1["trainable_weights"], bn1["output_shape"]) == (4, 2, [16, 16, 4])
    assert report["totals"]["weights"] == 18 and report["totals"]["trainable_weights"] == 12
    assert report["cut_points"] == CUT_POINTS[:3]
    assert report["keras"]["output_shape"] == [512]
    assert "model_config" not in report["keras"]
    assert main(["inspect", str(keras_files["keras"])]) == 0
    assert "flatten_1" in capsys.readouterr().out


def _moving_means(model):
    return {
        layer.name: layer.moving_mean.value.clone()
        for layer in model.layers
        if "BatchNormalization" in type(layer).__name__
    }


def _train_forward(bb):
    bb.train()
    bb.forward_features(torch.rand(4, 3, 16, 16) * 4)


def _changed(before, model):
    after = _moving_means(model)
    return sorted(k for k in before if not torch.equal(before[k], after[k]))


def test_frozen_keras_batchnorm_runs_in_inference_mode(keras_files):
    bb = create_backbone(str(keras_files["keras"]), cut="relu3")
    km = bb.keras_model
    freeze(bb)
    set_bn_policy(bb, "train")
    before = _moving_means(km)
    _train_forward(bb)
    assert _changed(before, km) == []  # frozen: Keras's own rule, whatever the policy
    unfreeze(bb, top=1)
    _train_forward(bb)
    assert _changed(before, km) == ["bn3"]  # policy "train" and trainable
    before = _moving_means(km)
    assert set_bn_policy(bb, "frozen") == 3
    unfreeze(bb)
    _train_forward(bb)
    assert _changed(before, km) == []  # policy "frozen": training=False, as the guide does


def test_in_memory_keras_model_and_recut_backbone(make_convnet):
    model = make_convnet()
    bb = create_backbone(model, cut="relu2")
    assert bb.kind == "model" and bb.cut_points == ["relu1", "relu2"]
    lower = create_backbone(bb, cut="relu1")
    assert lower.cut == "relu1" and lower.preprocess == bb.preprocess
    assert create_backbone(bb) is bb


def test_preprocessing_is_inferred_from_a_rescaling_layer(keras):
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255, name="scale")(inp)
    x = keras.layers.Conv2D(2, 3, name="c")(x)
    bb = create_backbone(keras.Model(inp, x))
    assert bb.preprocess == "raw"
    assert bb.data_config["std"] == pytest.approx((1 / 255,) * 3)
    assert bb.data_config["crop_mode"] == "squash"


def test_wrong_image_size_for_a_fixed_size_model_says_what_to_do(keras_files):
    bb = create_backbone(str(keras_files["keras"]), cut="relu1")
    with pytest.raises(InputError, match="takes 16x16 images, got 24x24"):
        bb.forward_features(torch.zeros(1, 3, 24, 24))
    with pytest.raises(InputError, match="not size=32x32"):
        create_backbone(str(keras_files["keras"]) + ",size=32")


def test_bad_specs_give_one_line_errors(keras, keras_files, tmp_path):
    with pytest.raises(InputError, match="did you mean: InceptionV3"):
        create_backbone("keras:InceptionV4")
    with pytest.raises(InputError, match="bad option 'colour=rgb'"):
        create_backbone("keras:InceptionV3,colour=rgb")
    with pytest.raises(InputError, match="unknown Keras preprocessing 'bgr'"):
        create_backbone("keras:VGG16,preprocess=bgr")
    with pytest.raises(InputError, match="does not exist"):
        create_backbone(str(tmp_path / "missing.keras"))
    model = keras.models.load_model(keras_files["keras"])
    model.save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(InputError, match=r"weights only.*--backbone keras:InceptionV3 --weights"):
        create_backbone(str(tmp_path / "only.weights.h5"))


def test_without_the_extra_a_keras_spec_names_it(monkeypatch, capsys):
    from transferkit.cli import main

    monkeypatch.setitem(sys.modules, "keras", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'transferkit\[keras\]'"):
        create_backbone("keras:InceptionV3")
    assert main(["inspect", "keras:InceptionV3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "transferkit[keras]" in err


def test_keras_imported_with_another_backend_is_refused_with_instructions(monkeypatch):
    fake = types.SimpleNamespace(
        __version__="3.15.1", backend=types.SimpleNamespace(backend=lambda: "jax")
    )
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(TransferkitError, match=r"'jax' backend.*KERAS_BACKEND=torch"):
        create_backbone("keras:InceptionV3")


def test_weights_digest_is_stable_across_loads(keras_files):
    a = create_backbone(str(keras_files["keras"]), cut="flatten_1")
    b = create_backbone(str(keras_files["h5"]), cut="flatten_1")
    assert a.weights_digest == b.weights_digest  # same weights, whichever format
    assert list(a.state_dict()) == list(b.state_dict())


def test_keras_weights_are_the_files(keras_files):
    bb = create_backbone(str(keras_files["h5"]), cut="relu3")
    for layer in bb.keras_model.layers:
        for w, saved in zip(layer.weights, keras_files["weights"].get(layer.name, []), strict=True):
            assert np.array_equal(w.numpy(), saved)
