"""Issue 5: the measured strategy advisor, `recommend`, `rank`, `fit --strategy auto`."""

from __future__ import annotations

import json

import pytest

from helpers import make_image_folder
from transferkit.cli import main
from transferkit.estimator import TransferClassifier
from transferkit.strategies.auto import SMALL_PER_CLASS, suggest_image_size

FAST = {
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "epochs": 20,
    "patience": 3,
    "fine_tune_epochs": 1,
    "batch_size": 16,
    "workers": 0,
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("five"), per_class=5, size=16)


@pytest.fixture(scope="module")
def larger_data(tmp_path_factory):
    return make_image_folder(
        tmp_path_factory.mktemp("forty"), per_class=40, size=16, layout="splits", test_per_class=6
    )


def test_recommend_advises_feature_extraction_for_five_images_per_class(tiny_data, capsys):
    assert main(["recommend", str(tiny_data), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["strategy"] == "feature-extract"
    assert d["size"]["small"] is True and d["size"]["per_class_median"] < SMALL_PER_CLASS
    assert "is small" in d["reason"] and "training images per class" in d["reason"]
    assert set(d["scores"]) == {"conv_stem", *[f"blocks.{i}" for i in range(7)], "conv_head"}
    for s in d["scores"].values():
        assert {"logme", "knn_accuracy", "linear_probe_accuracy"} <= set(s)
    assert d["similarity"]["bn_overall"] is not None
    assert d["image_size"] == 64  # 16 px images: no point in 224 px inputs


def test_recommend_table_output(tiny_data, capsys):
    assert main(["recommend", str(tiny_data), "--backbone", "resnet18", "--weights", "none"]) == 0
    out = capsys.readouterr().out
    assert "Advice:" in out and "Why:" in out and "layer4" in out


def test_enough_data_is_advised_to_fine_tune(larger_data):
    from transferkit.backbones import create_backbone
    from transferkit.data import load_data
    from transferkit.strategies.auto import decide

    splits = load_data(larger_data, seed=0)
    d = decide(create_backbone("resnet18", weights="none"), splits, image_size=16)
    assert d.strategy == "fine-tune" and d.unfreeze in ("all", "top:2")
    assert d.size["small"] is False


def test_fit_auto_records_decision_and_reuses_the_measuring_pass(larger_data, tmp_path):
    clf = TransferClassifier(
        "resnet18", weights="none", cache_dir=str(tmp_path / "c"), image_size=16, **FAST
    )
    clf.fit(larger_data, run_dir=tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["requested_strategy"] == "auto"
    assert m["strategy"] == m["decision"]["strategy"]
    assert m["decision"]["reason"]
    # the advisor's pass seeded the cache: the backbone did not run over train again
    assert m["feature_cache"]["hits"] == m["n_train"]
    assert m["feature_cache"]["extracted"] <= m["n_val"] + m["n_test"]


def test_feature_extract_without_cut_measures_the_cut(tiny_data, tmp_path):
    clf = TransferClassifier(
        "resnet18",
        "feature-extract",
        weights="none",
        image_size=16,
        cache_dir=str(tmp_path / "c"),
        **FAST,
    ).fit(tiny_data)
    d = clf.metrics_["decision"]
    assert clf.metrics_["cut"] == d["best_cut"] == d["cut"]
    assert "the cut is measured" in d["reason"]


def test_rank_reports_scores_and_kendall_tau(larger_data, capsys):
    assert (
        main(
            [
                "rank",
                str(larger_data),
                "--backbones",
                "efficientnet_lite0,efficientnet_lite1",
                "--image-size",
                "16",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert [b["backbone"] for b in r["backbones"]] != []
    for b in r["backbones"]:
        assert 0.0 <= b["test_probe_accuracy"] <= 1.0 and b["seconds"] > 0
        assert {"logme", "knn_accuracy", "linear_probe_accuracy"} <= set(b["scores"])
    assert set(r["kendall_tau"]) >= {"logme", "knn_accuracy", "linear_probe_accuracy"}


def test_suggested_image_size(tmp_path):
    small = make_image_folder(tmp_path / "s", per_class=2, size=28)
    from transferkit.data import load_data

    assert suggest_image_size(load_data(small).train, 224)[0] == 96
    big = make_image_folder(tmp_path / "b", per_class=2, size=64)
    assert suggest_image_size(load_data(big).train, 224)[0] == 224


def test_second_auto_fit_runs_the_backbone_zero_times(tiny_data, tmp_path, monkeypatch):
    import transferkit.strategies.auto as auto

    params = {"weights": "none", "image_size": 16, "cache_dir": str(tmp_path / "c"), **FAST}
    first = TransferClassifier("resnet18", **params).fit(tiny_data)

    def no_measuring(*args, **kwargs):
        raise AssertionError("the backbone ran to measure again")

    monkeypatch.setattr(auto, "measure_splits", no_measuring)
    second = TransferClassifier("resnet18", **params).fit(tiny_data)
    assert second.metrics_["feature_cache"]["extracted"] == 0
    assert second.metrics_["decision"] == first.metrics_["decision"] | {
        "seconds": second.metrics_["decision"]["seconds"]
    }
    assert (
        second.metrics_["test_accuracy" if "test_accuracy" in first.metrics_ else "val_accuracy"]
        == (
            first.metrics_["test_accuracy" if "test_accuracy" in first.metrics_ else "val_accuracy"]
        )
    )
