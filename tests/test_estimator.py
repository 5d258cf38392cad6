"""TransferClassifier, the scikit-learn-style shell: explicit settings that
``clone`` can copy, learned attributes after ``fit``, one prediction path shared with
``transferkit predict``, and runs that reload bit for bit."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from helpers import FAST_FIT, TinyNet
from transferkit import InputError
from transferkit.config import FitConfig
from transferkit.estimator import TransferClassifier
from transferkit.heads import HeadConfig
from transferkit.training import EpochEndHook

FAST = FAST_FIT


def test_every_setting_is_an_explicit_keyword_with_fitconfigs_default():
    params = inspect.signature(TransferClassifier.__init__).parameters
    fields = {f.name: f for f in dataclasses.fields(FitConfig)}
    assert set(params) - {"self"} == set(fields)
    defaults = FitConfig()
    for name, p in params.items():
        if name in ("self", "head"):
            continue
        assert p.default == getattr(defaults, name), name
    assert params["head"].default is None and defaults.head == HeadConfig()
    assert "fine_tune_lr" in (TransferClassifier.__init__.__doc__ or "") + (
        TransferClassifier.__doc__ or ""
    )


def test_get_params_set_params_and_sklearn_clone():
    from sklearn.base import clone

    clf = TransferClassifier("test_resnet", "fine-tune", lr=0.01, fine_tune_lr=0.0005)
    params = clf.get_params()
    assert params["backbone"] == "test_resnet" and params["lr"] == 0.01
    copy = clone(clf)
    assert copy is not clf and copy.get_params() == params
    assert clf.set_params(epochs=3) is clf and clf.epochs == 3
    with pytest.raises(InputError, match="unknown parameter 'epoch'"):
        clf.set_params(epoch=3)
    assert "lr=0.01" in repr(clf) and "epochs=3" in repr(clf)


def test_clone_of_a_module_backbone_is_an_independent_copy():
    from sklearn.base import clone

    net = TinyNet()
    copy = clone(TransferClassifier(net))
    assert copy.backbone is not net
    assert all(
        torch.equal(a, b) for a, b in zip(copy.backbone.parameters(), net.parameters(), strict=True)
    )


def test_settings_are_checked_when_fitting_with_the_option_named(data):
    with pytest.raises(InputError, match="--bn 'sometimes'"):
        TransferClassifier("test_resnet", bn="sometimes").fit(data)
    with pytest.raises(InputError, match="10-100x below"):
        TransferClassifier("test_resnet", lr=1e-3, fine_tune_lr=1e-3).fit(data)


def test_unfitted_estimator_says_so():
    with pytest.raises(InputError, match="not fitted yet"):
        TransferClassifier().predict(["x.png"])


def test_fit_returns_self_with_learned_attributes(data, tmp_path):
    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cut="layer2",
        cache_dir=str(tmp_path),
        **FAST,
    )
    assert clf.fit(data) is clf
    assert clf.classes_ == ["blue", "green", "red"]
    assert clf.config_.strategy == "feature-extract" and clf.config_.cut == "layer2"
    assert clf.history_ and clf.history_[0]["phase"] == "head"
    assert {"val_accuracy", "phases", "seconds_total"} <= set(clf.metrics_)
    assert clf.model_.backbone.cut == "layer2"


def test_fit_on_images_and_labels_and_score(tmp_path):
    rng = np.random.default_rng(0)
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    images, labels = [], []
    for name, colour in colours.items():
        for _ in range(8):
            noise = rng.normal(0, 20, (16, 16, 3))
            images.append((np.array(colour) + noise).clip(0, 255).astype("uint8"))
            labels.append(name)
    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cut="layer1",
        cache_dir=str(tmp_path),
        **FAST,
    ).fit(images, labels)
    assert clf.classes_ == ["blue", "red"]
    assert clf.predict(images[:2]) == ["red", "red"]
    assert clf.score(images, labels) >= 0.9


def test_predictions_are_those_of_transferkit_predict_on_the_saved_run(data, tmp_path):
    from transferkit.predict import load_predictor

    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        cut="layer2",
        cache_dir=str(tmp_path),
        **FAST,
    ).fit(data, run_dir=tmp_path / "run")
    files = sorted(str(p) for p in data.rglob("*.png"))
    via_cli = load_predictor(tmp_path / "run").predict(files, top_k=1)
    probs = clf.predict_proba(files)
    assert [p.path for p in via_cli.predictions] == files
    assert np.array_equal(probs.max(1), [p.confidence for p in via_cli.predictions])
    assert clf.predict(files) == [p.label for p in via_cli.predictions]


def test_fit_with_a_callback_sees_every_epoch(data, tmp_path):
    seen = []
    TransferClassifier(
        "test_resnet", "fine-tune", weights="none", cut="layer2", cache_dir=str(tmp_path), **FAST
    ).fit(data, callbacks=[EpochEndHook(lambda phase, epoch: seen.append((phase, epoch)))])
    assert seen[0] == ("head", 1) and seen[-1] == ("fine-tune", 2)


def test_saved_run_reloads_to_bit_identical_predictions(tmp_path, data):
    clf = TransferClassifier(
        "test_resnet",
        "fine-tune",
        weights="none",
        **{**FAST, "fine_tune_epochs": 1},
        cache_dir=str(tmp_path / "cache"),
    )
    clf.fit(data, run_dir=tmp_path / "run")
    files = sorted(str(p) for p in data.rglob("*.png"))
    loaded = TransferClassifier.load(tmp_path / "run")
    assert np.array_equal(loaded.predict_proba(files), clf.predict_proba(files))
    assert loaded.classes_ == ["blue", "green", "red"]
    assert loaded.predict(files[:1]) == clf.predict(files[:1])


def test_fit_leaves_the_garbage_collector_as_it_found_it(tmp_path, data):
    """fit freezes the objects that existed before it (torch's: nothing to collect)
    while it runs, and unfreezes them after; an outside freeze is left alone."""
    import gc

    seen = []
    clf = TransferClassifier(
        "test_resnet", "feature-extract", weights="none", **FAST, cache_dir=str(tmp_path)
    )
    # once per phase: get_freeze_count() walks every frozen object (~40 ms here)
    hook = [EpochEndHook(lambda phase, epoch: epoch == 1 and seen.append(gc.get_freeze_count()))]
    frozen_by_the_session = gc.get_freeze_count() > 0  # tests/conftest.py freezes
    gc.unfreeze()
    clf.fit(data, callbacks=hook)
    assert seen and min(seen) > 0  # frozen during the fit
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        clf.fit(data, callbacks=hook)
        # still frozen (objects that died meanwhile left the frozen set)
        assert gc.get_freeze_count() > before // 2
    finally:
        gc.unfreeze()
        if frozen_by_the_session:
            gc.freeze()
