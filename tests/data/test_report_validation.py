"""The data report says up front what the data forbid or make doubtful: a
validation split that is empty or too small to mean anything, strong imbalance
(with the option that answers it), many classes with few images (in one line)."""

from __future__ import annotations

from helpers import make_image_folder
from transferkit.data import check_data


def _warnings(root, **kwargs) -> list[str]:
    return check_data(root, **kwargs).warnings


def test_a_tiny_validation_split_is_warned_about(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, size=8)
    assert "2 validation images: accuracy on them means little; add images or a val/ folder" in (
        _warnings(root, val_split=0.2)
    )


def test_no_validation_split_is_warned_about(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=12, size=8)
    no_val = [w for w in _warnings(root, val_split=0) if "validation" in w]
    assert no_val == [
        "no validation images: nothing checks the model while it trains and "
        "validation accuracy cannot be measured; add images or a val/ folder"
    ]


def test_enough_validation_images_give_no_warning(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=50, size=8)
    assert not [w for w in _warnings(root, val_split=0.2) if "validation" in w]


def test_strong_imbalance_recommends_the_class_weight_option(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=30, size=8)
    for f in sorted((root / "b").iterdir())[2:]:
        f.unlink()
    (imbalance,) = [w for w in _warnings(root) if "imbalance" in w]
    assert imbalance.endswith("consider --class-weight balanced or more data")


def test_many_small_classes_are_named_in_one_short_line(tmp_path):
    names = [f"c{i:02d}" for i in range(14)]
    root = make_image_folder(tmp_path / "d", classes=names, per_class=1, size=8)
    (few,) = [w for w in _warnings(root) if w.startswith("few images")]
    assert "'c09' (1) and 4 more;" in few and "'c10'" not in few
