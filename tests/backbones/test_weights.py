"""Crafted or mistaken weight files: each is refused with one line naming the file."""

from __future__ import annotations

import json
import logging
import struct

import pytest
import timm
import torch
from safetensors.torch import save_file

from helpers import TinyNet
from transferkit import InputError, create_backbone
from transferkit.backbones.weights import load_into
from transferkit.cli import main


def _header_only(path, header: dict):
    """A safetensors file that is a header and nothing else."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def _state(dtype=None) -> dict[str, torch.Tensor]:
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _refused(capsys, *argv) -> str:
    assert main(["inspect", *argv]) == 2
    (line,) = capsys.readouterr().err.splitlines()  # one line, no traceback
    return line


def test_a_safetensors_file_without_tensors_is_refused_by_name(tmp_path, capsys):
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    line = _refused(capsys, "test_resnet", "--weights", str(empty))
    assert line == f"transferkit: error: weights file {str(empty)!r} holds no tensors"

    meta_only = _header_only(
        tmp_path / "meta.safetensors", {"__metadata__": {"architecture": "test_resnet"}}
    )
    line = _refused(capsys, str(meta_only))
    assert line == f"transferkit: error: weights file {str(meta_only)!r} holds no tensors"


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_tensors_of_another_kind_of_number_are_refused(tmp_path, dtype):
    path = tmp_path / "w.safetensors"
    save_file(_state(dtype), str(path), metadata={"architecture": "test_resnet"})
    for spec, weights in (("test_resnet", path), (path, None)):
        with pytest.raises(InputError) as err:
            create_backbone(str(spec), weights=weights and str(weights))
        message = str(err.value)
        assert message.startswith(f"weights file {str(path)!r}: tensor 'conv1.0.weight' holds ")
        assert f"{dtype} values where the model has torch.float32" in message


def test_a_file_mapped_by_order_is_checked_for_the_kind_of_number_too():
    state = {f"renamed.{i}": v for i, v in enumerate(TinyNet().state_dict().values())}
    state["renamed.0"] = state["renamed.0"].to(torch.int64)
    with pytest.raises(InputError, match=r"tensor 'renamed\.0' holds torch\.int64 values"):
        load_into(TinyNet(), state, "other.pt")


def test_half_precision_weights_still_load(tmp_path):
    path = tmp_path / "half.safetensors"
    save_file(_state(torch.float16), str(path))
    create_backbone("test_resnet", weights=str(path))


def test_names_that_match_nothing_are_one_line(tmp_path, capsys):
    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3), "bar": torch.zeros(2)}, str(path))
    line = _refused(capsys, "test_resnet", "--weights", str(path))
    assert "does not fit this architecture: 2 tensors in the file vs" in line


def test_a_state_dict_keyed_by_numbers_is_refused(tmp_path, capsys):
    path = tmp_path / "numbers.pt"
    torch.save(dict(enumerate(_state().values())), str(path))
    line = _refused(capsys, "test_resnet", "--weights", str(path))
    assert line == (
        f"transferkit: error: weights file {str(path)!r} holds no state dict of tensors "
        "(keys must be tensor names)"
    )


@pytest.mark.parametrize(
    "config",
    [b"[1, 2]", b"\xff\xfe{", b'{"architecture": 5}'],
    ids=["list", "not-utf8", "number"],
)
def test_a_bad_config_json_beside_a_checkpoint_is_named(tmp_path, capsys, config):
    path = tmp_path / "w.safetensors"
    save_file(_state(), str(path))
    (tmp_path / "config.json").write_bytes(config)
    line = _refused(capsys, str(path))
    assert line.startswith(f"transferkit: error: {str(tmp_path / 'config.json')!r} beside ")
    assert "--backbone ARCH --weights" in line


def test_mapping_by_order_is_logged_at_debug_only(caplog):
    state = {f"renamed.{i}": v for i, v in enumerate(TinyNet().state_dict().values())}
    with caplog.at_level(logging.DEBUG, logger="transferkit"):
        report = load_into(TinyNet(), state, "other.pt")
    assert report.matched_by == "order"
    mapped = [r for r in caplog.records if "onto the model by order" in r.getMessage()]
    assert [r.levelno for r in mapped] == [logging.DEBUG]
