"""Export round trip: torch, onnxruntime and TorchScript agree to 1e-4 on the logits for
any batch size, the sidecar carries classes and preprocessing, and `predict` on the
.onnx gives the same classes as on the run directory."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from helpers import TINY_CONFIG, TinyNet
from transferkit.backbones.module import create_module_backbone
from transferkit.cli import EXPORT_FORMATS, EXPORT_OPSET, main
from transferkit.errors import InputError, MissingDependencyError
from transferkit.export import (
    DEFAULT_OPSET,
    FORMATS,
    ExportError,
    export_format,
    export_model,
    export_run,
)
from transferkit.heads import TransferModel, create_head
from transferkit.predict import _jit_load, read_sidecar
from transferkit.runs import load_run

TINY = {"data_config": TINY_CONFIG, "image_size": None}


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    onnx = export_run(trained.run, out / "model.onnx")  # the format follows the suffix
    script = export_run(trained.run, out / "model.pt")
    return onnx, script


def test_the_format_follows_the_suffix_of_the_file(exported):
    onnx, script = exported
    assert (onnx.format, script.format) == ("onnx", "torchscript")
    assert json.loads(script.sidecar.read_text())["format"] == "torchscript"
    assert _jit_load(script.path, torch.device("cpu")) is not None
    suffixes = {s: export_format(f"m{s}") for s in (".onnx", ".ONNX", ".ts", ".torchscript")}
    assert suffixes == {
        ".onnx": "onnx",
        ".ONNX": "onnx",
        ".ts": "torchscript",
        ".torchscript": "torchscript",
    }
    assert export_format("m.bin", "onnx") == "onnx"  # a format named wins


@pytest.mark.parametrize("name", ["model.bin", "model"])
def test_a_suffix_that_names_no_format_is_refused_before_any_work(tmp_path, name):
    with pytest.raises(InputError) as err:
        export_run(tmp_path / "no-run-here", tmp_path / name)
    assert str(err.value) == (
        f"cannot tell the export format from --out {str(tmp_path / name)!r}: give it the "
        "suffix .onnx (onnx) or .pt, .pts, .torchscript, .ts (torchscript), "
        "or name the format (onnx or torchscript)"
    )


def test_a_format_the_suffix_contradicts_is_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match=r"--format onnx does not fit --out .*model.pt"):
        export_run(tmp_path / "no-run-here", tmp_path / "model.pt", format="onnx")
    with pytest.raises(InputError, match=r"would read a \.onnx file as onnx"):
        export_run(tmp_path / "no-run-here", tmp_path / "m.onnx", format="torchscript")


@pytest.mark.parametrize("package", ["onnx", "onnxruntime"])
def test_a_missing_onnx_package_names_the_extra_to_install(trained, tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    with pytest.raises(MissingDependencyError) as err:
        export_run(trained.run, tmp_path / "m.onnx")
    assert str(err.value) == (
        f"exporting to ONNX needs {package}, which is not installed: "
        "pip install 'transferkit[export]'"
    )
    assert list(tmp_path.iterdir()) == []


def test_torch_onnxruntime_and_torchscript_agree_on_logits_for_any_batch(trained, exported):
    onnx, script = exported
    model = load_run(trained.run).model
    session = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    traced = _jit_load(script.path, torch.device("cpu"))
    for batch in (1, 4, 7):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
            from_script = traced(x).numpy()
        from_onnx = session.run(None, {"image": x.numpy()})[0]
        assert from_onnx.shape == from_script.shape == expected.shape == (batch, 3)
        np.testing.assert_allclose(from_onnx, expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(from_script, expected, rtol=0, atol=1e-4)
    assert onnx.max_abs_diff <= onnx.bound and script.max_abs_diff <= script.bound
    assert onnx.batch_sizes == (2, 3)


def test_sidecar_has_classes_preprocessing_and_the_file_digest(trained, exported):
    onnx, _ = exported
    meta = read_sidecar(onnx.path)
    assert onnx.sidecar == onnx.path.with_name("model.onnx.json")
    assert meta["classes"] == trained.classes and meta["binary"] is False
    assert meta["input"]["name"] == "image" and meta["input"]["shape"] == ["batch", 3, 16, 16]
    assert meta["preprocessing"]["image_size"] == 16
    config = json.loads((trained.run / "config.json").read_text())
    mean = config["preprocessing"]["data_config"]["mean"]  # the backbone's own
    assert meta["preprocessing"]["resolved"]["mean"] == pytest.approx(mean)
    assert meta["verification"]["max_abs_diff"] == onnx.max_abs_diff
    assert meta["source"]["weights_sha256"] == config["weights_sha256"]


def test_predict_with_the_onnx_file_as_run_gives_the_run_directorys_classes(
    trained, exported, capsys
):
    results = {}
    for model in (trained.run, exported[0].path, exported[1].path):
        assert main(["predict", str(model), str(trained.data / "test"), "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        results[str(model)] = [(p["path"], p["prediction"]) for p in doc["predictions"]]
        confidences = [p["confidence"] for p in doc["predictions"]]
        results.setdefault("confidences", []).append(confidences)
    by_run, by_onnx, by_script = (
        results[str(m)] for m in (trained.run, *[e.path for e in exported])
    )
    assert len(by_run) == 10
    assert by_onnx == by_run and by_script == by_run
    np.testing.assert_allclose(results["confidences"][1], results["confidences"][0], atol=1e-5)


def test_an_altered_onnx_file_is_refused(exported, tmp_path, capsys):
    onnx = exported[0].path
    copy = tmp_path / "model.onnx"
    raw = bytearray(onnx.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    copy.write_bytes(bytes(raw))
    (tmp_path / "model.onnx.json").write_text(onnx.with_name("model.onnx.json").read_text())
    assert main(["predict", str(copy), str(onnx)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated or altered" in err


def test_export_cli_prints_the_checked_difference(trained, tmp_path, capsys):
    out = tmp_path / "deep" / "m.onnx"
    assert main(["export", str(trained.run), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"exported onnx to {out}" in text
    assert "verified with onnxruntime" in text and "max |logit difference| vs torch" in text
    assert out.is_file() and out.with_name("m.onnx.json").is_file()


def test_a_failed_check_leaves_no_file(tmp_path):
    model = _tiny_model(classes=3)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="disagrees with the torch model"):
        export_model(
            model, out, format="onnx", classes=list("abc"), preprocessing=TINY, tolerance=-1
        )
    assert list(tmp_path.iterdir()) == []


def _tiny_model(classes: int) -> TransferModel:
    torch.manual_seed(0)
    backbone = create_module_backbone(TinyNet(), cut="blocks.1", data_config=TINY_CONFIG)
    return TransferModel(backbone, create_head(backbone.feature_shape, classes)).eval()


@pytest.mark.parametrize("format", FORMATS)
def test_binary_head_cut_mid_network_exports_one_logit(tmp_path, format):
    """A cut inside the network stops the forward with an exception; the traced graph
    must still hold exactly the layers up to the cut, for every batch size."""
    model = _tiny_model(classes=2)
    out = tmp_path / f"m.{'onnx' if format == 'onnx' else 'pt'}"
    result = export_model(model, out, format=format, classes=["no", "yes"], preprocessing=TINY)
    meta = json.loads(result.sidecar.read_text())
    assert meta["binary"] is True and meta["output"]["shape"] == ["batch", 1]
    assert "sigmoid" in meta["output"]["probabilities"]
    assert result.max_abs_diff <= 1e-4
    assert model.training is False


def test_cli_choices_match_the_library():
    assert EXPORT_FORMATS == FORMATS and EXPORT_OPSET == DEFAULT_OPSET
