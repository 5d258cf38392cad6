"""Settings that only the backbone or the data can judge are judged before any
image goes through the backbone: a mistake costs milliseconds, not a feature
extraction, and its message names the value and what would work."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from helpers import TINY_CONFIG, make_image_folder
from transferkit import FitConfig, InputError, create_backbone, train
from transferkit.backbones.base import Backbone
from transferkit.data import load_data
from transferkit.data.loaders import ImageDataset
from transferkit.heads import HeadConfig

SMALL = {"head_epochs": 3, "fine_tune_epochs": 1, "batch_size": 8, "workers": 0}
SMALL |= {"lr": 1e-2, "fine_tune_lr": 1e-3}


@pytest.fixture
def no_image_read(monkeypatch):
    """Fail the test if any image is opened for the backbone (features, measuring)."""

    def refuse(self, index):
        raise AssertionError("an image went to the backbone before the settings were checked")

    monkeypatch.setattr(ImageDataset, "__getitem__", refuse)


def _fit(data, tmp_path, run_dir=None, **settings):
    """The whole ``fit``: data, backbone, train (and the run folder, if given)."""
    from transferkit.fitting import fit

    config = FitConfig(
        backbone="test_resnet", weights="none", cache_dir=str(tmp_path / "cache"), **settings
    )
    return fit(data, config.validate(), run_dir=run_dir)


@pytest.mark.parametrize("strategy", ["fine-tune", "auto"])
def test_unfreeze_more_blocks_than_the_backbone_has_fails_before_extraction(
    data, tmp_path, no_image_read, strategy
):
    with pytest.raises(InputError) as caught:
        _fit(data, tmp_path, strategy=strategy, unfreeze="top:99", image_size=16, **SMALL)
    message = str(caught.value)
    assert "--unfreeze top:99" in message and "has 5 blocks" in message
    assert "top:1 to top:5, or all" in message and "\n" not in message


def test_unfreeze_counts_the_blocks_below_the_cut(data, tmp_path, no_image_read):
    with pytest.raises(InputError, match="cut at layer2 has 3 blocks; use top:1 to top:3"):
        _fit(data, tmp_path, strategy="fine-tune", cut="layer2", unfreeze="top:4", **SMALL)


def test_a_cut_naming_no_layer_fails_before_extraction(data, tmp_path, no_image_read):
    """``train`` cuts the backbone where the settings say (it ignored ``cut`` before)."""
    splits = load_data(data)
    backbone = create_backbone("test_resnet", weights="none")
    config = FitConfig(strategy="feature-extract", cut="layer9", image_size=16, **SMALL)
    with pytest.raises(InputError, match=r"cannot cut test_resnet at 'layer9'.*cut points: conv1"):
        train(backbone, splits, config.validate())


def test_the_cut_in_the_settings_is_the_cut_trained(data, tmp_path):
    splits = load_data(data)
    backbone = create_backbone("test_resnet", weights="none")
    config = FitConfig(strategy="feature-extract", cut="layer2", image_size=16, **SMALL)
    config.cache_dir = str(tmp_path / "cache")
    result = train(backbone, splits, config.validate())
    assert result.model.backbone.cut == "layer2" and result.plan.cut == "layer2"


def test_flattened_features_at_another_image_size_fail_before_extraction(
    data, tmp_path, no_image_read
):
    """The head would be sized for the backbone's own input (it used to fail with a
    shape error after the whole extraction)."""
    with pytest.raises(InputError) as caught:
        _fit(
            data,
            tmp_path,
            strategy="feature-extract",
            cut="layer4",
            image_size=32,
            head=HeadConfig(pooling="flatten"),
            **SMALL,
        )
    message = str(caught.value)
    assert message.startswith("--pooling flatten with --image-size 32")
    assert "use --pooling avg or max, or use 160 (its own size)" in message


class _FixedSize(nn.Module):
    """Takes only 16 px images: its classifier flattens a 16x16 map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def test_an_image_size_the_backbone_cannot_take_fails_before_extraction(data, no_image_read):
    backbone = Backbone(_FixedSize(), name="fixed16", spec="fixed16", data_config=TINY_CONFIG)
    config = FitConfig(strategy="feature-extract", image_size=24, **SMALL).validate()
    with pytest.raises(InputError) as caught:
        train(backbone, load_data(data), config)
    message = str(caught.value)
    assert message.startswith("--image-size 24: fixed16 cannot take 24 px images (")
    assert message.endswith("use 16 (its own size) or leave --image-size out")


def test_the_plan_is_logged_with_the_strategy_and_cut_used(tiny_data, tmp_path, caplog):
    """The advisor may move the cut: the log says where the backbone is cut for
    training, as soon as the plan is made, before anything trains."""
    caplog.set_level(logging.INFO, logger="transferkit")
    splits = load_data(tiny_data)
    config = FitConfig(image_size=16, cache_dir=str(tmp_path / "cache"), **SMALL).validate()
    result = train(create_backbone("test_resnet", weights="none"), splits, config)
    lines = [r.getMessage() for r in caplog.records]
    plan_line = next(i for i, line in enumerate(lines) if line.startswith("plan: "))
    first_phase = next(i for i, line in enumerate(lines) if line.startswith("head: "))
    used = result.model.backbone.cut
    assert lines[plan_line] == f"plan: {result.config.strategy}, test_resnet cut at {used}, 16 px"
    assert plan_line < first_phase


@pytest.fixture(scope="module")
def one_image_class(tmp_path_factory):
    """Two colour classes of 6 images and one ('blue') of a single image."""
    root = make_image_folder(tmp_path_factory.mktemp("one"), per_class=6, size=16)
    for f in sorted((root / "blue").iterdir())[1:]:
        f.unlink()
    return root


@pytest.mark.parametrize("strategy", ["auto", "feature-extract"])
def test_a_class_of_one_image_skips_the_measurement_and_says_so(
    one_image_class, tmp_path, caplog, strategy
):
    """Measuring cross-validates (2 images per class at least): instead of failing
    after the measuring pass, the plan needs no measurement and the log says why."""
    from transferkit.advisor import make_plan

    caplog.set_level(logging.INFO, logger="transferkit")
    splits = load_data(one_image_class)
    backbone = create_backbone("test_resnet", weights="none")
    plan, measured = make_plan(backbone, splits, FitConfig(strategy=strategy, **SMALL))
    assert (plan.strategy, plan.cut, measured) == ("feature-extract", "layer4", None)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        f"{strategy}: not measured: class 'blue' has 1 training image, and measuring "
        "cross-validates with at least 2 per class; so feature extraction at layer4, 64 px "
        f"(add images to let {strategy} measure)"
    ]


def test_a_class_of_one_image_trains_under_auto(one_image_class, tmp_path):
    result = _fit(one_image_class, tmp_path, image_size=16, **SMALL).result
    assert result.config.strategy == "feature-extract" and result.requested_strategy == "auto"
    assert result.plan.decision is None and result.config.image_size == 16


def test_recommend_refuses_at_once_with_what_to_do(one_image_class, no_image_read):
    from transferkit.recommend import recommend

    with pytest.raises(InputError) as caught:
        recommend(one_image_class, "test_resnet", weights="none", image_size=16)
    message = str(caught.value)
    assert message.startswith("cannot measure the data: class 'blue' has 1 training image")
    assert "add images" in message and "\n" not in message


def test_one_image_per_class_trains_with_no_validation_and_warns_up_front(tmp_path, caplog):
    """Many classes of one image: no validation split at all. One warning says so
    before training; the head runs all its epochs (nothing to stop early on) and
    keeps the last, instead of the first epoch that scored a loss of 0 on nothing."""
    names = [f"c{i:02d}" for i in range(12)]
    root = make_image_folder(tmp_path / "data", classes=names, per_class=1, size=16)
    caplog.set_level(logging.INFO, logger="transferkit")
    settings = SMALL | {"head_epochs": 12, "selection": "holdout"}  # the epoch-trained head
    fitted = _fit(root, tmp_path, image_size=16, **settings)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    no_val = [w for w in warnings if "validation" in w]
    assert no_val == [
        "data: no validation images: nothing checks the model while it trains and "
        "validation accuracy cannot be measured; add images or a val/ folder"
    ]
    head = fitted.result.phases[0]
    assert (head.epochs_run, head.best_epoch, head.stopped) == (12, 12, "max epochs")
    assert "val" not in fitted.result.evaluations and "val_accuracy" not in fitted.metrics
    assert all(row["val_loss"] != row["val_loss"] for row in fitted.result.history)  # NaN


def test_without_validation_both_phases_run_every_epoch_and_keep_the_last(tmp_path):
    """Fine-tuning is not thrown away for failing to beat a score on no images, and
    the run folder (checkpoints of the kept weights included) is written."""
    root = make_image_folder(tmp_path / "data", per_class=1, size=16)
    settings = SMALL | {"head_epochs": 4, "fine_tune_epochs": 2, "patience": 1}
    settings["selection"] = "holdout"  # the head trained by epochs
    fitted = _fit(
        root, tmp_path, run_dir=tmp_path / "run", strategy="fine-tune", image_size=16, **settings
    )
    phases = [(p.name, p.epochs_run, p.best_epoch) for p in fitted.result.phases]
    assert phases == [("head", 4, 4), ("fine-tune", 2, 2)]
    assert (tmp_path / "run" / "model.safetensors").is_file()
