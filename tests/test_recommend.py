"""`transferkit recommend` and `transferkit rank`: measured advice before training."""

from __future__ import annotations

import json

import pytest

from helpers import make_image_folder
from transferkit.cli import main


@pytest.fixture(scope="module")
def larger_data(tmp_path_factory):
    return make_image_folder(
        tmp_path_factory.mktemp("twenty"), per_class=20, size=16, layout="splits", test_per_class=6
    )


def test_recommend_json_advises_feature_extraction_for_five_images_per_class(tiny_data, capsys):
    args = ["recommend", str(tiny_data), "--backbone", "test_efficientnet", "--weights", "none"]
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["strategy"] == "feature-extract"
    assert d["size"]["small"] is True
    assert "is small" in d["reason"] and "training images per class" in d["reason"]
    assert set(d["scores"]) == {"conv_stem", *[f"blocks.{i}" for i in range(5)], "conv_head"}
    for s in d["scores"].values():
        assert {"logme", "knn_accuracy", "linear_probe_accuracy"} <= set(s)
    assert d["similarity"]["bn_overall"] is not None
    assert d["image_size"] == 64  # 16 px images: no point in 160 px inputs
    # as fit does on small data: candidate features compared by cross-validation
    cuts = [r["cut"] for r in d["candidates"]]
    assert d["cut"] in cuts and any("+" in c for c in cuts)
    assert "compared by cross-validation" in d["reason"]


def test_recommend_table_output(tiny_data, capsys):
    args = ["recommend", str(tiny_data), "--backbone", "test_resnet", "--weights", "none"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Advice:" in out and "Why:" in out and "layer4" in out
    assert "Features compared by cross-validation" in out and "CV accuracy" in out


def _checkpoint(arch, folder):
    """A local weights file that names its architecture (offline, like a download)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = timm.create_model(arch, pretrained=False).state_dict()
    path = folder / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), {"architecture": arch})
    return str(path)


def test_rank_reports_scores_test_accuracy_and_kendall_tau(larger_data, tmp_path, capsys):
    specs = ",".join(_checkpoint(a, tmp_path) for a in ("test_resnet", "test_efficientnet"))
    args = ["rank", str(larger_data), "--backbones", specs, "--image-size", "16", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["backbones"]) == 2
    for b in r["backbones"]:
        assert 0.0 <= b["test_probe_accuracy"] <= 1.0 and b["seconds"] > 0
        assert {"logme", "knn_accuracy", "linear_probe_accuracy"} <= set(b["scores"])
    assert set(r["kendall_tau"]) >= {"logme", "knn_accuracy", "linear_probe_accuracy"}


def test_rank_without_weights_offline_is_one_clear_line(larger_data, capsys, monkeypatch):
    from transferkit.backbones import timm_loader

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm_loader, "hub_reachable", lambda timeout=3.0: False)
    assert main(["rank", str(larger_data), "--backbones", "test_resnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weights" in err
