"""Fit, fine-tune, save, reload and predict with Keras backbones:
the base's frozen Keras weights are bit-identical after phase 1, fine-tuning changes
only the unfrozen block, a run reloads without the original model file."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from helpers import FAST_FIT
from transferkit import create_backbone
from transferkit.estimator import TransferClassifier
from transferkit.training import EpochEndHook

FAST = {k: v for k, v in FAST_FIT.items() if k != "image_size"}  # sizes vary here


def _files(data):
    return sorted(str(p) for p in data.rglob("*.png"))


def _keras_state(model) -> dict[str, np.ndarray]:
    return {
        f"{layer.name}/{w.name}": w.numpy().copy() for layer in model.layers for w in layer.weights
    }


def _watch_backbone(monkeypatch):
    """The backbones ``fit`` creates, so the test can look inside them."""
    import transferkit.fitting as fitting

    made = []
    original = fitting.create_backbone

    def create(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(fitting, "create_backbone", create)
    return made


def test_feature_extract_from_a_saved_h5_leaves_keras_weights_bit_identical(
    tmp_path, data, keras_files, monkeypatch
):
    from transferkit.cli import main

    made = _watch_backbone(monkeypatch)
    run = tmp_path / "run"
    rc = main(
        [
            "fit", str(data), "--out", str(run), "--backbone", str(keras_files["h5"]),
            "--cut", "flatten_1", "--strategy", "feature-extract", "--head-epochs", "20",
            "--lr", "0.01", "--workers", "0",
            "--cache-dir", str(tmp_path / "cache"), "--hidden", "16",
        ]
    )  # fmt: skip
    assert rc == 0
    km = made[0].keras_model
    for layer in km.layers:  # phase 1 trained the head only
        for w, saved in zip(layer.weights, keras_files["weights"].get(layer.name, []), strict=True):
            assert np.array_equal(w.numpy(), saved), f"{layer.name}/{w.name}"
    assert len(km.trainable_weights) == 0  # frozen, as Keras counts it
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"]["cut"] == "flatten_1"
    assert config["backbone"]["keras"]["kind"] == "file"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.5


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_fine_tune_top_block_of_a_keras_file(tmp_path, data, keras_files, bn, monkeypatch):
    clf = TransferClassifier(
        str(keras_files["keras"]),
        "fine-tune",
        cut="relu3",
        unfreeze="top:1",
        bn=bn,
        cache_dir=str(tmp_path / "cache"),
        **{**FAST, "fine_tune_epochs": 1, "selection": "holdout"},  # a head epoch to watch
    )
    seen = {}

    def grab(phase, epoch):
        if phase == "head":  # before fine-tuning: still the file's weights
            seen["head"] = _keras_state(clf_backbone().keras_model)
        else:  # after a fine-tuning epoch (the run may keep the phase-1 weights as best)
            seen["trainable"] = [w.path for w in clf_backbone().keras_model.trainable_weights]
            seen["tuned"] = _keras_state(clf_backbone().keras_model)

    made = _watch_backbone(monkeypatch)
    clf_backbone = lambda: made[0]  # noqa: E731
    clf.fit(data, callbacks=[EpochEndHook(grab)])
    before, after = seen["head"], seen["tuned"]
    assert sorted(p.split("/")[-2] for p in seen["trainable"]) == ["bn3", "bn3", "conv3", "conv3"]
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    expected = ["bn3/beta", "bn3/gamma", "conv3/bias", "conv3/kernel"]
    if bn == "train":  # the unfrozen block's BN learns statistics; frozen ones never do
        expected = sorted([*expected, "bn3/moving_mean", "bn3/moving_variance"])
    assert changed == expected
    assert before["conv1/kernel"].tobytes() == after["conv1/kernel"].tobytes()


def test_saved_run_reloads_without_the_keras_file(tmp_path, data, keras, make_convnet):
    path = tmp_path / "mine.keras"
    make_convnet().save(path)
    clf = TransferClassifier(
        str(path), "fine-tune", cut="relu2", cache_dir=str(tmp_path / "cache"), **FAST
    )
    clf.fit(data, run_dir=tmp_path / "run")
    expected = clf.predict_proba(_files(data))
    path.unlink()  # the run holds the architecture; weights come from model.safetensors
    loaded = TransferClassifier.load(tmp_path / "run")
    assert np.array_equal(loaded.predict_proba(_files(data)), expected)
    assert loaded.predict(_files(data)[:2]) == clf.predict(_files(data)[:2])
    assert loaded.model_.backbone.cut == "relu2"


def test_in_memory_keras_model_fits_and_reloads(tmp_path, data, make_convnet):
    clf = TransferClassifier(
        make_convnet(), "feature-extract", cut="flatten_1", cache_dir=str(tmp_path / "c"), **FAST
    )
    clf.fit(data, run_dir=tmp_path / "run")
    loaded = TransferClassifier.load(tmp_path / "run")
    assert np.array_equal(loaded.predict_proba(_files(data)), clf.predict_proba(_files(data)))


def test_auto_strategy_measures_every_keras_cut_point(tmp_path, data, keras_files):
    from transferkit.transferability import pooled_features_per_cut

    bb = create_backbone(str(keras_files["keras"]), cut="flatten_1")
    x = torch.rand(4, 3, 16, 16)
    feats = pooled_features_per_cut(bb, [x])
    assert {cut: f.shape for cut, f in feats.items()} == {
        "relu1": (4, 4),
        "relu2": (4, 4),
        "flatten_1": (4, 512),
    }
    with torch.no_grad():  # the pooled maps are the Keras layer's, channels first
        relu2 = bb.keras_model.get_layer("relu2").output
        sub = keras_model_to(bb, relu2)
        expected = sub(x.permute(0, 2, 3, 1), training=False).mean(dim=(1, 2))
    assert np.allclose(feats["relu2"], expected.numpy(), atol=1e-6)
    clf = TransferClassifier(
        str(keras_files["keras"]), cut="flatten_1", cache_dir=str(tmp_path / "c"), **FAST
    ).fit(data)
    assert clf.metrics_["strategy"] in ("feature-extract", "fine-tune")  # what auto chose
    assert clf.metrics_["val_accuracy"] >= 0.5


def keras_model_to(backbone, output):
    from transferkit.backbones.keras_loader import import_keras

    return import_keras().Model(backbone.keras_model.inputs[0], output)


def test_second_fit_reuses_cached_keras_features(tmp_path, data, keras_files):
    kw = {"cut": "flatten_1", "cache_dir": str(tmp_path / "cache"), **FAST}
    a = TransferClassifier(str(keras_files["keras"]), "feature-extract", **kw).fit(data)
    assert a.metrics_["feature_cache"]["extracted"] == 36  # 18 images, 18 mirrored
    b = TransferClassifier(str(keras_files["keras"]), "feature-extract", **kw).fit(data)
    assert b.metrics_["feature_cache"]["extracted"] == 0  # the weights digest is stable
    assert a.metrics_["val_accuracy"] == b.metrics_["val_accuracy"]


def test_training_step_sends_gradients_only_to_unfrozen_keras_weights(keras_files):
    from transferkit import create_optimizer, freeze, set_bn_policy, unfreeze

    bb = create_backbone(str(keras_files["keras"]), cut="relu3")
    freeze(bb)
    unfreeze(bb, top=1)
    set_bn_policy(bb, "frozen")  # the default of fit: BN statistics stay as pretrained
    opt = create_optimizer(bb, lr=0.1)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    bb.train()
    bb.forward_features(torch.rand(2, 3, 16, 16)).square().mean().backward()
    opt.step()
    after = bb.state_dict()
    changed = sorted(k.split(".")[-1] for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["bn3/beta", "bn3/gamma", "conv3/bias", "conv3/kernel"]


def test_keras_run_exports_and_the_export_matches(tmp_path, data, keras_files):
    from transferkit.cli import main

    clf = TransferClassifier(
        str(keras_files["keras"]), "feature-extract", cut="relu3", cache_dir=str(tmp_path / "c"),
        **FAST,
    )  # fmt: skip
    clf.fit(data, run_dir=tmp_path / "run")
    formats = ["torchscript"]
    if importlib.util.find_spec("onnxruntime") is not None:
        formats.append("onnx")
    for fmt in formats:  # export verifies the exported graph against the model itself
        out = tmp_path / f"model.{fmt}"
        assert main(["export", str(tmp_path / "run"), "--format", fmt, "--out", str(out)]) == 0
        assert out.is_file()


def test_feature_extract_of_a_saved_keras_model_without_a_cut(tmp_path, data, keras_files):
    """No cut given: the advisor measures every cut point of the Keras model and the
    backbone is re-cut there (a Keras backbone cannot be deep-copied; re-cutting
    builds a Keras sub-model instead). The run reloads and predicts the same."""
    clf = TransferClassifier(
        str(keras_files["keras"]), "feature-extract", cache_dir=str(tmp_path / "c"), **FAST
    ).fit(data, run_dir=tmp_path / "run")
    d = clf.metrics_["decision"]
    assert "compared by cross-validation" in d["reason"]  # small data
    assert clf.metrics_["cut"] == d["cut"] == clf.model_.backbone.cut
    assert d["candidates"] and not any("+" in r["cut"] for r in d["candidates"])  # no joins
    assert set(d["scores"]) == set(create_backbone(str(keras_files["keras"])).cut_points)
    files = _files(data)
    reloaded = TransferClassifier.load(tmp_path / "run")
    assert np.array_equal(reloaded.predict_proba(files), clf.predict_proba(files))
