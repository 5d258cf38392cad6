"""A damaged ``model.safetensors`` is refused by every command that loads the run: one
line, exit 2, no traceback, and never a prediction from a model that is not the one
trained."""

from __future__ import annotations

import pytest

from transferkit.cli import main


def _flip_one_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) - 100] ^= 0x01  # inside the last tensor's data: still loads as safetensors
    path.write_bytes(bytes(raw))


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.fixture(scope="module", params=[_flip_one_byte, _truncate], ids=["flipped", "truncated"])
def damaged_run(request, trained, tmp_path_factory):
    run = trained.copy(tmp_path_factory.mktemp("damaged") / "run")
    request.param(run / "model.safetensors")
    return run


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_damaged_weights_file_is_refused_in_one_line(command, damaged_run, trained, capsys):
    args = {
        "evaluate": ["evaluate", str(damaged_run), str(trained.data)],
        "predict": ["predict", str(damaged_run), str(trained.data / "test")],
        "export": ["export", str(damaged_run), "--format", "onnx",
                   "--out", str(damaged_run / "m.onnx")],
    }[command]  # fmt: skip
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("transferkit: error: ")
    assert "model.safetensors" in err and "truncated or altered" in err
    assert "Traceback" not in err
    assert not (damaged_run / "m.onnx").exists()
