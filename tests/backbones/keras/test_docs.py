"""docs/keras.md: the walk-throughs of the classic Keras tutorials run as written, on
tiny data (the sizes the test changes are named in each replacement)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers import make_image_folder

DOCS = Path(__file__).resolve().parents[3] / "docs"


def _python_blocks() -> list[str]:
    text = (DOCS / "keras.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run(code: str, replacements: dict[str, str]) -> dict:
    for old, new in replacements.items():
        assert old in code, old
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "keras.md", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs"), ("horse", "human"), per_class=6)


@pytest.mark.slow
def test_inception_mixed7_walkthrough(images, tmp_path, keras):
    block = _python_blocks()[0]
    scope = _run(
        block,
        {
            'DATA = "horse-or-human/"': f"DATA = {str(images)!r}",
            'WEIGHTS = "/tmp/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"': (
                'WEIGHTS = "none"'  # no download in tests
            ),
            "hidden=1024": "hidden=16",  # a 37,632 x 1024 Dense is slow to train on CPU
            'run_dir="runs/horse-or-human"': f"run_dir={str(tmp_path / 'run')!r}",
        },
    )
    clf = scope["clf"]
    assert clf.model_.backbone.keras_output_shape == (7, 7, 768)
    assert clf.model_.head.in_features == 7 * 7 * 768 and clf.model_.head.binary
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_xception_custom_loop_walkthrough(images, keras):
    block = _python_blocks()[1]
    scope = _run(
        block,
        {
            'DATA = "cats_vs_dogs/"': f"DATA = {str(images)!r}",
            'create_backbone("keras:Xception,size=150")': (
                'create_backbone("keras:Xception,size=71", weights="none")'  # smallest, offline
            ),
            "range(20)": "range(1)",
            "range(10)": "range(1)",
        },
    )
    base = scope["base"]
    km = base.keras_model
    assert len(km.trainable_weights) == len([w for w in km.weights if w.trainable]) > 0
    assert base.model.bn_policy == "frozen"
    assert torch.isfinite(torch.tensor(scope["last_loss"]))


def test_saved_model_cut_at_flatten_1_walkthrough(images, tmp_path, make_convnet, monkeypatch):
    model_path = tmp_path / "model.hdf5"
    make_convnet().save(model_path)
    monkeypatch.chdir(tmp_path)
    image = str(next(images.rglob("*.png")))
    scope = _run(
        _python_blocks()[2],
        {
            'DATA = "data/"': f"DATA = {str(images)!r}",
            '"some_image.png"': repr(image),
        },
    )
    assert scope["base"].keras_output_shape == (512,)
    assert (tmp_path / "runs" / "method1" / "config.json").is_file()
    assert scope["clf"].model_.head.config.hidden == 1024
