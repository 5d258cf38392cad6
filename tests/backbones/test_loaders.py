"""The loader registry: which loader takes a spec, rebuilding a run's backbone from its
record, and re-cutting a backbone without copying it (torch backbones; Keras ones are
in tests/keras/test_keras_registry.py)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from helpers import TINY_CONFIG, TinyNet
from transferkit import InputError, create_backbone
from transferkit.backbones import (
    Backbone,
    Loader,
    rebuild_backbone,
    recut_backbone,
    register_loader,
    registry,
)
from transferkit.backbones.module import create_module_backbone


def _record(bb: Backbone) -> dict:
    """What a run stores: ``describe()`` plus timm's architecture name."""
    cfg = getattr(bb.model, "pretrained_cfg", None) or {}
    return {**bb.describe(), "architecture": cfg.get("architecture")}


def _same_features(a: Backbone, b: Backbone, size: int = 32) -> bool:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def _layer_output(model: nn.Module, layer: str, forward, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s output when ``forward(x)`` runs the whole model (a forward hook)."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        with torch.no_grad():
            forward(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.fixture
def plugin_loaders(monkeypatch):
    """A private copy of the loader table, so registrations end with the test."""
    monkeypatch.setattr(registry, "_LOADERS", list(registry._LOADERS))


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    state = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    path = tmp_path / "net.safetensors"
    save_file(state, str(path), metadata={"architecture": "test_efficientnet"})
    return path


@pytest.fixture(scope="module")
def lite0():
    """The default built-in, random weights (a rebuild never changes it)."""
    return create_backbone("efficientnet_lite0", pretrained=False, cut="blocks.1")


# ----------------------------------------------------------------------- dispatch


def test_each_kind_of_spec_goes_to_its_loader_and_is_recorded(tiny_net, checkpoint, lite0):
    made = {
        "timm": create_backbone("test_efficientnet", weights="none"),
        "timm:": create_backbone("timm:test_efficientnet", weights="none"),
        "builtin": lite0,
        "module": create_backbone(tiny_net),
        "checkpoint": create_backbone(str(checkpoint)),
    }
    loaders = {kind: bb.describe()["loader"] for kind, bb in made.items()}
    assert loaders == {
        "timm": "timm",
        "timm:": "timm",
        "builtin": "builtin",
        "module": "module",
        "checkpoint": "checkpoint",
    }
    assert made["builtin"].source == "builtin (random init)"


def test_a_registered_loader_is_asked_first_and_its_name_recorded(plugin_loaders):
    made = []

    def create(spec, *, weights, cut, pretrained):
        made.append((spec, weights, cut, pretrained))
        return create_module_backbone(TinyNet(), data_config=TINY_CONFIG, cut=cut)

    def rebuild(record, module):
        return create_module_backbone(TinyNet(), data_config=TINY_CONFIG, cut=record["cut"])

    plugin = Loader("plugin", lambda spec: spec == "test_resnet", create, rebuild)
    assert register_loader(plugin) is plugin
    bb = create_backbone("test_resnet", weights="none", cut="blocks.0")  # timm's name
    assert made == [("test_resnet", None, "blocks.0", False)]
    assert bb.describe()["loader"] == "plugin"
    again = rebuild_backbone(bb.describe())
    assert again.cut == "blocks.0" and isinstance(again.model, TinyNet)
    # other specs still reach their own loaders
    assert create_backbone("test_efficientnet", weights="none").loader == "timm"


def test_register_loader_places_and_replaces_by_name(plugin_loaders):
    def names():
        return [entry.name for entry in registry._LOADERS]

    first = Loader("plugin", lambda spec: False, lambda spec, **kw: None)
    register_loader(first, before="timm")
    assert names().index("plugin") == names().index("timm") - 1
    register_loader(Loader("plugin", lambda spec: False, lambda spec, **kw: None))
    assert names()[0] == "plugin" and names().count("plugin") == 1
    with pytest.raises(ValueError, match="no loader 'nope'"):
        register_loader(first, before="nope")


def test_specs_no_loader_takes_keep_their_errors():
    with pytest.raises(InputError, match="must be a name, a path or a torch module"):
        create_backbone(42)
    with pytest.raises(InputError, match="must be a name, a path or a torch module"):
        create_backbone("   ")
    with pytest.raises(InputError, match=r"unknown backbone 'test_resnt'.*did you mean"):
        create_backbone("test_resnt")


# ------------------------------------------------------------------------ rebuild


def test_timm_backbone_rebuilds_from_its_record():
    bb = create_backbone("timm:test_efficientnet", weights="none", cut="blocks.2")
    again = rebuild_backbone(_record(bb))
    assert again.loader == "timm" and again.cut == "blocks.2"
    assert (again.name, again.spec) == (bb.name, bb.spec) == ("test_efficientnet",) * 2
    again.load_state_dict(bb.state_dict())
    assert _same_features(bb, again)


def test_builtin_backbone_rebuilds_without_its_weights_package(monkeypatch, lite0):
    from transferkit.backbones import builtin

    bb = lite0

    def no_package(name):
        raise AssertionError("a rebuild must not read the weights package")

    monkeypatch.setattr(builtin, "builtin_weights_path", no_package)
    again = rebuild_backbone(_record(bb))
    assert again.loader == "builtin" and again.name == "efficientnet_lite0"
    assert again.cut == "blocks.1"
    again.load_state_dict(bb.state_dict())
    assert _same_features(bb, again)


def test_module_backbone_rebuilds_only_around_the_module_given(tiny_net):
    bb = create_module_backbone(tiny_net, cut="blocks.1", data_config=TINY_CONFIG)
    record = _record(bb)
    with pytest.raises(InputError, match="was a Python module; load it with"):
        rebuild_backbone(record)
    again = rebuild_backbone(record, TinyNet())
    assert again.loader == "module" and again.cut == "blocks.1" and again.input_size == (3, 16, 16)
    again.load_state_dict(bb.state_dict())
    assert _same_features(bb, again, size=16)


def test_checkpoint_backbone_rebuilds_without_the_file(checkpoint):
    bb = create_backbone(str(checkpoint), cut="blocks.1")
    checkpoint.unlink()
    again = rebuild_backbone(_record(bb))
    assert (again.loader, again.name, again.spec, again.source) == (
        "checkpoint",
        "test_efficientnet",
        str(checkpoint),
        "checkpoint net.safetensors",
    )
    again.load_state_dict(bb.state_dict())
    assert _same_features(bb, again)


def test_records_without_a_loader_rebuild_as_runs_always_did(tiny_net, checkpoint, lite0):
    def old(bb):
        record = _record(bb)
        del record["loader"]
        return record

    timm_bb = create_backbone("test_efficientnet", weights="none", cut="blocks.2")
    assert rebuild_backbone(old(timm_bb)).loader == "timm"
    assert rebuild_backbone(old(lite0)).loader == "builtin"
    # a checkpoint's run was rebuilt from its timm architecture
    from_file = rebuild_backbone(old(create_backbone(str(checkpoint), cut="blocks.1")))
    assert from_file.loader == "timm" and from_file.spec == str(checkpoint)
    # a module given wins over the recorded architecture
    given = rebuild_backbone(old(timm_bb), timm.create_model("test_efficientnet"))
    assert given.loader == "module" and given.cut == "blocks.2"
    module_record = old(create_module_backbone(tiny_net, data_config=TINY_CONFIG))
    with pytest.raises(InputError, match="was a Python module"):
        rebuild_backbone(module_record)


def test_a_record_naming_an_unregistered_loader_says_so():
    bb = create_module_backbone(TinyNet(), data_config=TINY_CONFIG)
    record = {**_record(bb), "loader": "onnx"}
    with pytest.raises(InputError, match="loader 'onnx', which is not registered"):
        rebuild_backbone(record)


# -------------------------------------------------------------------------- recut


@pytest.mark.parametrize(
    ("spec", "layer", "size", "last_block"),
    [
        ("test_efficientnet", "blocks.2", 64, "blocks.2"),
        ("tiny", "blocks.1", 16, "blocks.1"),
        ("tiny", "stem_bn", 16, "stem"),  # a module inside a block: the block is kept
    ],
)
def test_recut_features_are_that_layers_output_on_the_uncut_original(
    tiny_net, spec, layer, size, last_block
):
    if spec == "tiny":
        bb = create_module_backbone(tiny_net, data_config=TINY_CONFIG)
    else:
        bb = create_backbone(spec, weights="none")
    bb.eval()
    x = torch.randn(2, 3, size, size)
    expected = _layer_output(bb.model, layer, bb.forward_features, x)
    name, spec_, digest = bb.name, bb.spec, bb.weights_digest
    recut = recut_backbone(bb, layer)
    assert recut.cut == layer and recut.cut_points[-1] != layer  # cut, not the top
    assert (recut.name, recut.spec, recut.weights_digest) == (name, spec_, digest)
    assert recut.loader == bb.loader and recut.feature_shape[0] == expected.shape[1]
    with torch.no_grad():
        got = recut.eval().forward_features(x)
    assert torch.allclose(got, expected, atol=1e-6)  # unpooled
    assert torch.allclose(got.mean((2, 3)), expected.mean((2, 3)), atol=1e-6)  # pooled
    # nothing after the cut runs or counts any more
    assert [n for n, _ in recut.blocks][-1] == last_block


def test_recut_of_a_cut_backbone_goes_lower_never_higher():
    bb = create_backbone("test_efficientnet", weights="none", cut="blocks.3").eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(InputError, match=r"already cut at 'blocks\.3'.*create_backbone"):
        recut_backbone(bb, "blocks.4")
    with pytest.raises(InputError, match="did you mean"):
        recut_backbone(bb, "blocks.22")
    expected = _layer_output(bb.model, "blocks.1", bb.forward_features, x)  # still usable
    lower = recut_backbone(bb, "blocks.1")
    with torch.no_grad():
        assert torch.allclose(lower.eval()(x), expected, atol=1e-6)
    assert recut_backbone(lower, "blocks.1") is lower


def test_recut_backbone_rebuilds_from_its_record_at_the_new_cut():
    bb = create_backbone("test_efficientnet", weights="none")
    recut = recut_backbone(bb, "blocks.1")
    again = rebuild_backbone(_record(recut))
    assert again.cut == "blocks.1"
    again.load_state_dict(recut.state_dict())
    assert _same_features(recut, again)


def test_create_backbone_recuts_a_cut_torch_backbone_it_is_given():
    bb = create_backbone("test_efficientnet", weights="none", cut="blocks.3").eval()
    x = torch.randn(1, 3, 64, 64)
    expected = _layer_output(bb.model, "blocks.2", bb.forward_features, x)
    lower = create_backbone(bb, cut="blocks.2")
    assert lower.cut == "blocks.2" and lower.loader == "timm"
    with torch.no_grad():
        assert torch.allclose(lower.eval()(x), expected, atol=1e-6)
    assert create_backbone(lower) is lower


def test_recut_needs_a_layer_name():
    bb = create_module_backbone(TinyNet(), data_config=TINY_CONFIG)
    with pytest.raises(InputError, match="needs a layer name"):
        recut_backbone(bb, None)
