"""The Python examples of docs/training.md run as written (with a tiny backbone and
tiny images in place of EfficientNet-Lite and Fashion-MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import make_image_folder

PAGE = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def _block_after(heading: str) -> str:
    text = PAGE.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def _tiny(code: str, data: Path, cache: Path) -> str:
    """The page's code on a tiny random-weight backbone, tiny images and few epochs."""
    small = (
        f'weights="none", image_size=16, head_epochs=5, cache_dir={str(cache)!r}, '
        'selection="holdout"'  # tiny data would otherwise choose the head without epochs
    )
    for page, test in {
        '"data/fm"': repr(str(data)),
        '"efficientnet_lite0", image_size=96': f'"test_resnet", {small}, fine_tune_epochs=2',
        'create_backbone("efficientnet_lite0")': 'create_backbone("test_resnet", weights="none")',
        "FitConfig(image_size=96)": (
            f"FitConfig(image_size=16, head_epochs=5, cache_dir={str(cache)!r})"
        ),
        "StopAtAccuracy(0.95)": "StopAtAccuracy(0.0)",  # any accuracy will do
    }.items():
        code = code.replace(page, test)
    return code


def test_the_callbacks_example_runs_and_its_callbacks_take_effect(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6, size=16)
    code = _tiny(_block_after("### Callbacks"), data, tmp_path / "cache")
    scope = {"TransferClassifier": __import__("transferkit").TransferClassifier}
    exec(compile(code, "training.md", "exec"), scope)
    assert scope["seen"] and set(scope["seen"]) <= {"head", "fine-tune"}
    first = scope["clf"].metrics_["phases"][0]
    assert (first["stopped"], first["epochs_run"]) == ("reached 0.0", 1)


def test_the_train_example_runs(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6, size=16)
    code = _tiny(_block_after("### `train`"), data, tmp_path / "cache")
    scope: dict = {}
    exec(compile(code, "training.md", "exec"), scope)
    result = scope["result"]
    assert result.plan.reason and result.history and "val" in result.evaluations
