"""Backbone specs: timm names, local checkpoints, torch modules, bad specs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from helpers import TINY_CONFIG, TinyNet
from transferkit import InputError, WeightsUnavailableError, create_backbone, freeze, summary
from transferkit.backbones import list_backbones, timm_loader, weights_digest


def test_unknown_spec_names_close_matches():
    with pytest.raises(InputError, match="did you mean: resnet50"):
        create_backbone("resnet5")


def test_list_backbones_starts_with_builtins():
    names = list_backbones()
    assert names[:3] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert "resnet18" in names


def test_timm_random_init_and_cut():
    bb = create_backbone("test_resnet", weights="none", cut="layer3")
    assert bb.cut_points == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert bb.num_features == 192
    assert "timm" in bb.source


def test_offline_hub_gives_a_clear_error_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache
    monkeypatch.setattr(timm_loader, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        create_backbone("resnet18")


def _test_resnet_state():
    torch.manual_seed(1)
    return timm.create_model("test_resnet", pretrained=False).state_dict()


def test_safetensors_checkpoint_with_architecture_metadata(tmp_path):
    state = _test_resnet_state()
    path = tmp_path / "tr.safetensors"
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(path),
        metadata={"architecture": "test_resnet"},
    )
    bb = create_backbone(str(path))
    assert torch.equal(bb.model.conv1[0].weight, state["conv1.0.weight"])


def test_pth_checkpoint_with_sidecar_config_and_timm_name_with_weights(tmp_path):
    state = _test_resnet_state()
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    with pytest.raises(InputError, match="does not say its architecture"):
        create_backbone(str(path))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_resnet"}))
    assert torch.equal(create_backbone(str(path)).model.conv1[0].weight, state["conv1.0.weight"])
    bb = create_backbone("test_resnet", weights=str(path))
    assert torch.equal(bb.model.conv1[0].weight, state["conv1.0.weight"])


def test_pickled_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": TinyNet()}, path)  # a pickled module, not a state dict
    with pytest.raises(InputError, match="cannot read weights file"):
        create_backbone("test_resnet", weights=str(path))


def test_wrong_architecture_is_refused(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(TinyNet().state_dict(), str(path))
    with pytest.raises(InputError, match="does not fit"):
        create_backbone("test_resnet", weights=str(path))


def test_torchscript_archive_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.trace(TinyNet().eval(), torch.zeros(1, 3, 16, 16)).save(str(path))
    with pytest.raises(InputError, match="TorchScript archive"):
        create_backbone(str(path))


def test_torch_module_backbone_blocks_cut_and_pruning(tiny_net):
    from transferkit.backbones.module import create_module_backbone

    bb = create_module_backbone(tiny_net, cut="blocks.1", data_config=TINY_CONFIG)
    assert bb.cut_points == ["stem", "blocks.0", "blocks.1", "blocks.2", "fc"]
    assert [n for n, _ in bb.blocks] == ["stem", "blocks.0", "blocks.1"]
    assert bb.feature_shape == (16, 8, 8) and bb.num_features == 16
    # stem and its BN form one block, never split
    stem_group = dict(bb.blocks)["stem"]
    assert {id(p) for p in stem_group.parameters()} >= {id(tiny_net.stem_bn.weight)}
    # blocks.2 and fc run after the cut: gone, so not counted and not trained
    assert isinstance(bb.model.fc, nn.Identity) and isinstance(bb.model.blocks[2], nn.Identity)
    freeze(bb)
    assert summary(bb).trainable_weights == 0


def test_cut_at_unknown_layer_lists_cut_points(tiny_net):
    with pytest.raises(InputError, match=r"cut points: stem, blocks\.0"):
        create_backbone(tiny_net, cut="blocks.7")


def test_weights_digest_tracks_weights(tiny_net):
    a = weights_digest(tiny_net)
    with torch.no_grad():
        tiny_net.fc.bias += 1
    assert weights_digest(tiny_net) != a
