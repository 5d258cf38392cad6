"""`data check` and check_data/load_data on folders full of junk: every bad file is
listed with its reason, unusable data is refused with one line, and smaller problems
warn but still train."""

from __future__ import annotations

import json
import os

import pytest
from data_builders import good_images, noise, save

from transferkit.cli import main
from transferkit.data import DataReport, check_data, load_data
from transferkit.errors import InputError


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def test_junk_folder_lists_every_bad_file_and_counts_good_ones(junk, capsys):
    root, expected = junk
    rc, out, err = run_cli(capsys, "data", "check", str(root), "--json", "--val-split", "0")
    assert rc == 0, err
    report = json.loads(out)
    assert report["usable"] is True
    assert report["counts"]["train"] == expected["good"]
    found = {s["path"]: s["kind"] for s in report["skipped"]}
    assert found == expected["bad"]
    assert all(s["reason"] for s in report["skipped"])
    assert report["classes"] == ["cat", "dog"]


def test_junk_reasons_say_what_is_wrong(junk):
    root, _ = junk
    report = check_data(root, val_split=0)
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert "unknown extension '.txt'" in reasons["cat/notes.txt"]
    assert "0 bytes" in reasons["cat/empty.png"]
    assert "truncated" in reasons["cat/truncated.jpg"]
    assert "too large to decode safely" in reasons["dog/bomb.png"]
    assert "too large to decode safely" in reasons["dog/bigger-bomb.png"]
    assert "symlink loop" in reasons["cat/loop.png"]
    assert "symlink loop" in reasons["cat/nested/up"]
    assert "broken symlink" in reasons["dog/broken.png"]
    assert "permission denied" in reasons["cat/locked.png"]
    assert ".DS_Store" in reasons["cat/.DS_Store"]
    assert "Thumbs.db" in reasons["dog/Thumbs.db"]
    assert "not inside a class folder" in reasons["README.txt"]
    assert report.conversions["exif_rotated"] == 1
    assert {"L", "P", "RGBA", "CMYK", "I;16"} <= set(report.conversions)


def test_human_report_survives_undecodable_names(junk, capsys):
    root, _ = junk
    rc, out, _ = run_cli(capsys, "data", "check", str(root))
    assert rc == 0
    assert "OK: usable" in out and "猫" not in out  # good files are counted, not listed
    assert "cat/notes.txt: not an image" in out


def test_one_class_exits_2_with_one_line(tmp_path, capsys):
    good_images(tmp_path / "only", 3)
    rc, _, err = run_cli(capsys, "data", "check", str(tmp_path))
    assert rc == 2
    assert err.count("\n") == 1 and "only 1 class" in err


def test_empty_class_exits_2_with_one_line(tmp_path, capsys):
    good_images(tmp_path / "cat", 3)
    (tmp_path / "dog").mkdir()
    rc, out, err = run_cli(capsys, "data", "check", str(tmp_path), "--json")
    assert rc == 2
    assert err.strip() == "transferkit: error: class 'dog' has no usable image (empty folder)"
    assert json.loads(out)["usable"] is False


def test_class_of_only_bad_files_is_refused(tmp_path):
    good_images(tmp_path / "cat", 3)
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "a.jpg").write_bytes(b"nope")
    (tmp_path / "dog" / "b.png").write_bytes(b"")
    with pytest.raises(InputError, match="class 'dog' has no usable image \\(2 files, none") as e:
        load_data(tmp_path)
    assert isinstance(e.value.report, DataReport)
    assert len(e.value.report.skipped) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no class folders"),
        (lambda p: good_images(p, 2), "no class folders"),
        (lambda p: p.write_text("x"), "not a folder"),
    ],
)
def test_unusable_sources_exit_2(tmp_path, capsys, make, message):
    target = tmp_path / "data"
    make(target)
    rc, _, err = run_cli(capsys, "data", "check", str(target))
    assert rc == 2 and message in err and err.count("\n") == 1


def test_split_layout_with_val_and_test(tmp_path):
    for i, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 3))):
        for k, cls in enumerate(("a", "b")):
            # distinct seeds: identical images across splits would be dropped as leaks
            good_images(tmp_path / split / cls, n, seed=100 * i + 10 * k)
    data = load_data(tmp_path)
    assert data.report.source["kind"] == "split-folders"
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 6)
    assert data.split["source"] == "folder"
    assert {ex.label for ex in data.test} == {0, 1}


def test_val_class_missing_from_train_is_refused(tmp_path):
    good_images(tmp_path / "train" / "a", 3, seed=1)
    good_images(tmp_path / "train" / "b", 3, seed=2)
    good_images(tmp_path / "val" / "c", 2, seed=3)
    report = check_data(tmp_path)
    assert not report.usable and "val/ has class folders that train/ lacks: c" in report.reason


def test_duplicates_across_splits_are_dropped_from_evaluation(tmp_path):
    good_images(tmp_path / "train" / "a", 3, seed=1)
    good_images(tmp_path / "train" / "b", 3, seed=2)
    good_images(tmp_path / "test" / "a", 2, seed=1)  # byte-identical to train/a files
    save(noise(seed=5000), tmp_path / "test" / "b" / "fresh.png")
    data = load_data(tmp_path, val_split=0)
    assert len(data.test) == 1
    dup = [s for s in data.report.skipped if s["kind"] == "duplicate"]
    assert [s["path"] for s in dup] == ["test/a/img000.png", "test/a/img001.png"]
    assert "train/a/img000.png" in dup[0]["reason"]


def test_conflicting_labels_and_copies_warn(tmp_path):
    good_images(tmp_path / "a", 4, seed=1)
    good_images(tmp_path / "b", 4, seed=2)
    save(noise(seed=1000), tmp_path / "b" / "same-as-a.png")  # == a/img000.png
    save(noise(seed=2001), tmp_path / "b" / "copy.png")  # == b/img001.png
    warnings = " ".join(check_data(tmp_path).warnings)
    assert "under different classes" in warnings
    assert "exact copies" in warnings


def test_few_images_and_imbalance_warn_but_train(tmp_path):
    good_images(tmp_path / "big", 30, seed=1)
    good_images(tmp_path / "small", 2, seed=2)
    report = check_data(tmp_path)
    assert report.usable
    text = " ".join(report.warnings)
    assert "few images in class 'small' (2)" in text
    assert "strong class imbalance" in text


def test_verdicts_are_cached_and_refreshed_on_change(tmp_path):
    good_images(tmp_path / "a", 3, seed=1)
    good_images(tmp_path / "b", 3, seed=2)
    first = check_data(tmp_path)
    assert first.cache["misses"] == 6
    second = check_data(tmp_path)
    assert (second.cache["hits"], second.cache["misses"]) == (6, 0)
    target = tmp_path / "a" / "img000.png"
    target.write_bytes(target.read_bytes()[:40])  # now truncated
    os.utime(target, ns=(1, 1))
    third = check_data(tmp_path)
    assert third.cache["misses"] == 1
    assert [s["path"] for s in third.skipped] == ["a/img000.png"]


def test_report_json_is_plain_json(junk, tmp_path):
    root, _ = junk
    report = check_data(root)
    report.write_json(tmp_path / "report.json")
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["totals"]["skipped"] == len(report.skipped)
    assert again["split"]["source"] == "stratified"


def test_bad_options_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="val_split"):
        check_data(tmp_path, val_split=1.5)
    with pytest.raises(InputError, match="image_mode"):
        check_data(tmp_path, image_mode="CMYK")
