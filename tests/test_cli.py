"""`transferkit inspect`: JSON offline, a cut with the layer table, and a one-line error
for an unknown model."""

from __future__ import annotations

import json

import pytest

from transferkit.cli import main


def test_inspect_builtin_json_offline(capsys):
    assert main(["inspect", "efficientnet_lite0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    totals = out["totals"]
    assert totals["params"] == totals["trainable_params"] + totals["non_trainable_params"]
    assert totals["params"] == 3_413_024  # lite0 without its classifier
    assert totals["non_trainable_params"] > 0  # BN running statistics
    assert "blocks.6" in out["cut_points"]
    assert out["layers"][0]["name"] == "conv_stem" and out["layers"][0]["output_shape"] == [
        32,
        112,
        112,
    ]


def test_inspect_with_cut_and_table(capsys):
    assert main(["inspect", "resnet18", "--weights", "none", "--cut", "layer2"]) == 0
    out = capsys.readouterr().out
    assert "layer2" in out and "Cut points" in out and "layer4" in out


def test_inspect_unknown_model_exits_2_with_one_line(capsys):
    assert main(["inspect", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_model" in err
    assert "Traceback" not in err


def test_python_dash_m_transferkit_runs_the_command(monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["transferkit", "--version"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("transferkit", run_name="__main__")
    assert done.value.code == 0 and "transferkit" in capsys.readouterr().out
