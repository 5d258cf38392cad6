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


# ------------------------------------------------------------------ usage errors


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_misspelt_option_names_the_close_ones(capsys):
    assert main(["fit", "data", "--out", "run", "--learning-rate", "0.1"]) == 2
    err = _one_line_error(capsys)
    assert "unrecognized argument --learning-rate; did you mean --lr" in err
    assert main(["fit", "--batchsize", "8"]) == 2  # before the missing-argument error
    assert "did you mean --batch-size?" in _one_line_error(capsys)
    assert main(["predict", "run", "x.png", "--topk", "3"]) == 2
    assert "did you mean --top-k?" in _one_line_error(capsys)


def test_a_misspelt_command_or_choice_names_the_close_ones(capsys):
    assert main(["fitt", "data"]) == 2
    assert "invalid choice 'fitt'; did you mean: fit?" in _one_line_error(capsys)
    assert main(["data", "chek", "x"]) == 2
    assert "did you mean: check?" in _one_line_error(capsys)
    assert main(["fit", "d", "--out", "r", "--strategy", "fine_tune"]) == 2
    assert "did you mean: fine-tune?" in _one_line_error(capsys)


def test_epochs_is_a_usage_error_that_names_both_phases_flags(capsys):
    from transferkit.config import FitConfig

    for argv in (["--epochs", "5"], ["--epochs=5"], ["--epochs"]):
        assert main(["fit", "data", "--out", "run", *argv]) == 2
        err = _one_line_error(capsys)
        defaults = FitConfig()
        assert "--head-epochs N (max epochs of the head on cached features, default " in err
        assert f"default {defaults.head_epochs})" in err
        assert "--fine-tune-epochs N (max epochs of fine-tuning, default " in err
        assert f"default {defaults.fine_tune_epochs})" in err


def test_fit_help_shows_each_phases_epochs_with_fitconfigs_default(capsys):
    from transferkit.config import FitConfig

    assert main(["fit", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    defaults = FitConfig()
    assert (
        "--head-epochs HEAD_EPOCHS max epochs of the head phase on cached features "
        f"(default {defaults.head_epochs})" in out
    )
    assert f"max epochs of the fine-tuning phase (default {defaults.fine_tune_epochs})" in out
    assert "--epochs" not in out.replace("-epochs ", "").replace("-epochs=", "")


# ----------------------------------------------------------------------- fit flags


def _fit_args(*flags: str):
    from transferkit.cli import build_parser

    return build_parser().parse_args(["fit", "data", "--out", "run", *flags])


def test_each_phases_epochs_flag_sets_its_setting():
    from transferkit.cli import fit_config_from_args

    cfg = fit_config_from_args(_fit_args("--head-epochs", "7", "--fine-tune-epochs", "3"))
    assert cfg.head_epochs == 7 and cfg.fine_tune_epochs == 3


def test_class_weight_flag_is_parsed():
    assert _fit_args("--class-weight", "balanced").class_weight == "balanced"
    assert _fit_args().class_weight is None


def test_class_weight_flag_reaches_fit_config():
    from transferkit.cli import fit_config_from_args

    assert fit_config_from_args(_fit_args("--class-weight", "balanced")).class_weight == "balanced"


def _fake_fit(monkeypatch, metrics: dict) -> list[dict]:
    """TransferClassifier.fit replaced by one that records its keywords."""
    from transferkit.estimator import TransferClassifier

    calls = []

    def fit(self, X, y=None, **kwargs):
        calls.append(kwargs)
        self.metrics_ = metrics
        return self

    monkeypatch.setattr(TransferClassifier, "fit", fit)
    return calls


METRICS = {"strategy": "feature-extract", "backbone": "test_resnet", "seconds_total": 1.5}


def test_overwrite_flag_reaches_fit(monkeypatch, capsys):
    calls = _fake_fit(monkeypatch, {**METRICS, "val_accuracy": 0.5, "n_val": 4})
    assert main(["fit", "data", "--out", "run", "--overwrite"]) == 0
    assert calls[-1]["overwrite"] is True and calls[-1]["run_dir"] == "run"
    assert main(["fit", "data", "--out", "run"]) == 0
    assert calls[-1]["overwrite"] is False
    assert "val accuracy 0.5000" in capsys.readouterr().out


def test_fit_without_validation_images_says_so_instead_of_nan(monkeypatch, capsys):
    _fake_fit(monkeypatch, {**METRICS, "n_val": 0, "test_accuracy": 0.75})
    assert main(["fit", "data", "--out", "run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no validation images, test accuracy 0.7500 (feature-extract")
    assert "nan" not in out


def test_export_format_is_optional(monkeypatch, capsys):
    import transferkit.export as export

    calls = []

    def fake_export_run(run, out, **kwargs):
        calls.append(kwargs)
        raise export.InputError("stop here")

    monkeypatch.setattr(export, "export_run", fake_export_run)
    assert main(["export", "run", "--out", "model.onnx"]) == 2
    assert "format" not in calls[-1]  # export_run reads it from the suffix
    assert main(["export", "run", "--out", "model.bin", "--format", "torchscript"]) == 2
    assert calls[-1]["format"] == "torchscript"
    capsys.readouterr()


# --------------------------------------------------- the parser's torch-free vocabulary


def test_the_parsers_choices_are_their_owners():
    from transferkit import choices, compute, config, export, freezing, heads
    from transferkit.reports import text

    assert choices.STRATEGIES == config.STRATEGIES
    assert choices.DEVICES == config.DEVICES
    assert choices.PRECISIONS == compute.PRECISIONS
    assert choices.BN_POLICIES == freezing.BN_POLICIES
    assert choices.POOLINGS == heads.POOLINGS
    assert choices.PREDICT_FORMATS == text.PREDICT_FORMATS
    assert (choices.EXPORT_FORMATS, choices.EXPORT_OPSET) == (export.FORMATS, export.DEFAULT_OPSET)


def test_fit_defaults_read_without_torch_are_fitconfigs():
    import dataclasses

    from transferkit.choices import fit_defaults
    from transferkit.config import FitConfig
    from transferkit.heads import HeadConfig

    expected = {
        f.name: f.default
        for cls in (FitConfig, HeadConfig)
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
    }
    assert fit_defaults() == expected


def test_trust_settings_are_fit_flags():
    from transferkit.cli import fit_config_from_args

    cfg = fit_config_from_args(_fit_args("--unknown-rate", "0.1", "--coverage", "0.8", "--tta"))
    assert (cfg.unknown_rate, cfg.coverage, cfg.tta) == (0.1, 0.8, True)
    plain = fit_config_from_args(_fit_args())
    assert (plain.unknown_rate, plain.coverage, plain.tta) == (0.05, 0.9, False)
