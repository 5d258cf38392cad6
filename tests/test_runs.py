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


def _edit_config(run, edit):
    import json

    path = run / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda c: c.pop("head"), "'head' is missing"),
        (lambda c: c["head"].update(num_classes=10**12), "'num_classes' is 1000000000000"),
        (lambda c: c["head"].update(in_features=-3), "out of range"),
        (lambda c: c["head"].pop("pooling"), "'pooling'"),
        (lambda c: c.update(classes="cats"), "'classes'"),
        (lambda c: c["preprocessing"].pop("data_config"), "'data_config'"),
    ],
    ids=["no-head", "wild-num-classes", "negative-width", "no-pooling", "classes", "no-prep"],
)
def test_a_config_json_missing_a_key_or_holding_a_wild_value_is_one_line(
    edit, named, trained, tmp_path, capsys
):
    run = trained.copy(tmp_path / "run")
    _edit_config(run, edit)
    assert main(["predict", str(run), str(trained.data / "test")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("transferkit: error: "), err
    assert "config.json" in err and named in err, err
