"""The Python examples in docs/results.md run as written, and the plain-onnxruntime one
reproduces `predict` (so its preprocessing recipe is the one transferkit uses)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.export import export_run
from transferkit.predict import load_predictor

DOC = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def _block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_plain_onnxruntime_example_matches_predict(trained, tmp_path, capsys):
    model = export_run(trained.run, tmp_path / "model.onnx", format="onnx").path
    image = tmp_path / "odd.png"  # not square, not 16 px: the resize and crop matter
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (31, 23, 3), dtype=np.uint8)).save(image)
    code = _block("import onnxruntime as ort").replace(
        'MODEL, IMAGE = "demo/model.onnx", "demo/data/test/bag/00053.png"',
        f"MODEL, IMAGE = {str(model)!r}, {str(image)!r}",
    )
    scope: dict = {}
    exec(compile(code, "results.md", "exec"), scope)
    label, confidence = capsys.readouterr().out.split()
    expected = load_predictor(model).predict([image]).predictions[0]
    assert label == expected.label
    assert float(confidence) == pytest.approx(expected.confidence, abs=1e-5)


def test_python_api_example_runs(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "run").symlink_to(trained.copy(tmp_path / "run"))
    (tmp_path / "demo" / "data").symlink_to(trained.data)
    code = _block("from transferkit.evaluation import evaluate_run")
    code = code.replace("demo/data/test/bag", "demo/data/test/red")
    exec(compile(code, "results.md", "exec"), {})
    out = capsys.readouterr().out
    assert "not predicted: extra/*.jpg no file matches this pattern" in out
    assert (tmp_path / "run" / "report.html").is_file()
    assert (tmp_path / "demo" / "model.onnx.json").is_file()
