"""CSV and in-memory array sources, and the stratified, seeded validation split."""

from __future__ import annotations

import numpy as np
import pytest
from data_builders import good_images, noise

from transferkit.data import ImageDataset, check_data, load_data
from transferkit.errors import InputError


def test_csv_with_header_relative_paths_and_bad_rows(tmp_path):
    a = good_images(tmp_path / "imgs" / "a", 3, seed=1)
    b = good_images(tmp_path / "imgs" / "b", 3, seed=2)
    rows = (
        ["path,label"]
        + [f"imgs/a/{p.name},cat" for p in a]
        + [f"{p},dog" for p in b]
        + ["imgs/missing.png,dog", "only-one-column", "", f"imgs/a/{a[0].name},dog"]
    )
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    data = load_data(csv, val_split=0)
    assert data.classes == ["cat", "dog"]
    assert len(data.train) == 6 and data.report.source["kind"] == "csv"
    kinds = {s["path"]: s["kind"] for s in data.report.skipped}
    assert kinds == {
        "imgs/missing.png": "missing",
        "labels.csv:9": "bad_row",
        "labels.csv:11": "duplicate_entry",
    }


def test_csv_split_column_provides_validation(tmp_path):
    imgs = good_images(tmp_path, 8, seed=3)
    lines = [f"{p.name},{'ab'[i % 2]},{'val' if i >= 6 else 'train'}" for i, p in enumerate(imgs)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    data = load_data(tmp_path / "d.csv")
    assert (len(data.train), len(data.val)) == (6, 2)
    assert data.split["source"] == "csv"


def test_csv_that_is_not_utf8_is_reported(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"\xff\xfe\x00bad")
    report = check_data(tmp_path / "d.csv")
    assert not report.usable and "UTF-8" in report.reason


def test_uint8_arrays_round_trip_through_the_dataset(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 10, 10), dtype=np.uint8)
    labels = np.array([0, 1, 2] * 4)
    data = load_data((images, labels, ["x", "y", "z"]), val_split=0.25, seed=1)
    assert data.classes == ["x", "y", "z"]
    assert (len(data.train), len(data.val)) == (9, 3)
    ds = ImageDataset(data.train + data.val, channels=1)
    for ex, (x, y) in zip(data.train + data.val, ds, strict=True):
        i = int(ex.path.rsplit("/", 1)[1].split(".")[0])
        assert y == labels[i]
        assert np.array_equal((x[0].numpy() * 255).round().astype(np.uint8), images[i])
    again = load_data((images, labels, ["x", "y", "z"]), val_split=0.25, seed=1)
    assert again.train == data.train  # same content -> same files and digests


def test_arrays_keep_integer_label_order_beyond_ten_classes():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    labels = list(range(12)) * 2
    data = load_data((images, labels), val_split=0)
    assert data.classes == [str(i) for i in range(12)]  # not sorted as strings
    assert sorted(ex.label for ex in data.train) == sorted(labels)


def test_list_of_pil_images_with_string_labels_and_a_bad_item():
    images = [noise(seed=i) for i in range(6)] + [None]
    labels = ["b", "a"] * 3 + ["a"]
    data = load_data((images, labels), val_split=0)
    assert data.classes == ["a", "b"] and len(data.train) == 6
    assert data.report.skipped == [
        {"path": "array[6]", "kind": "not_image", "reason": "not an image: NoneType"}
    ]


@pytest.mark.parametrize(
    "source, message",
    [
        ((np.zeros((4, 8, 8), np.float32), [0, 1, 0, 1]), "uint8"),
        ((np.zeros((4, 8, 8), np.uint8), [0, 1]), "4 images but 2 labels"),
        ((np.zeros((2, 8, 8), np.uint8), [0, 5], ["a", "b"]), "label 5 is outside"),
        (42, "unsupported data source"),
    ],
)
def test_bad_arrays_are_reported_not_raised(source, message):
    report = check_data(source)
    assert not report.usable and message in report.reason
    with pytest.raises(InputError, match=message):
        load_data(source)


def _folder(tmp_path, sizes: dict[str, int]):
    for k, (cls, n) in enumerate(sizes.items()):
        good_images(tmp_path / cls, n, seed=k + 1)
    return tmp_path


def test_stratified_split_is_seeded_and_per_class(tmp_path):
    root = _folder(tmp_path, {"a": 10, "b": 5, "c": 1})
    one = load_data(root, val_split=0.2, seed=3)
    assert one.report.counts["val"] == {"a": 2, "b": 1, "c": 0}
    assert one.split["source"] == "stratified" and one.split["seed"] == 3
    assert "val has no images of class 'c'" in " ".join(one.report.warnings)
    same = load_data(root, val_split=0.2, seed=3)
    assert same.val == one.val and same.split["val_fingerprint"] == one.split["val_fingerprint"]
    other = load_data(root, val_split=0.2, seed=4)
    assert other.split["val_fingerprint"] != one.split["val_fingerprint"]
    assert not {e.path for e in one.train} & {e.path for e in one.val}


def test_adding_a_file_does_not_move_the_others(tmp_path):
    root = _folder(tmp_path, {"a": 20, "b": 20})
    before = {e.path for e in load_data(root, val_split=0.5, seed=0).val}
    good_images(root / "a" / "new", 1, seed=77)
    after = {e.path for e in load_data(root, val_split=0.5, seed=0).val}
    assert len(before - after) <= 1


def test_copies_stay_on_one_side_of_the_split(tmp_path):
    root = _folder(tmp_path, {"a": 6, "b": 6})
    for i in range(6):
        (root / "a" / f"copy{i}.png").write_bytes((root / "a" / f"img{i:03d}.png").read_bytes())
    data = load_data(root, val_split=0.5, seed=0)
    assert not {e.digest for e in data.train} & {e.digest for e in data.val}
