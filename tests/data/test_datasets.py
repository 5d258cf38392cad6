"""`transferkit datasets`: demo datasets as PNG class folders, reproducible by seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from transferkit.cli import main
from transferkit.data import check_data, write_dataset
from transferkit.data.datasets import FASHION_MNIST_DIR

needs_fmnist = pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (make sysdeps)",
)


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


@needs_fmnist
def test_fashion_mnist_counts_and_seed(tmp_path, capsys):
    out = tmp_path / "fm"
    assert (
        main(
            [
                "datasets",
                "fashion-mnist",
                str(out),
                "--per-class",
                "20",
                "--test",
                "100",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert "200 train + 100 test" in capsys.readouterr().out
    classes = sorted(p.name for p in (out / "train").iterdir())
    assert len(classes) == 10
    for c in classes:
        assert len(list((out / "train" / c).glob("*.png"))) == 20
        assert len(list((out / "test" / c).glob("*.png"))) == 10
    same = tmp_path / "same"
    write_dataset("fashion-mnist", same, per_class=20, test=100, seed=3)
    assert _tree(same) == _tree(out)
    other = tmp_path / "other"
    write_dataset("fashion-mnist", other, per_class=20, test=100, seed=4)
    assert _tree(other) != _tree(out)
    report = check_data(out)
    assert report.usable and report.totals()["test"] == 100
    assert report.metadata["name"] == "fashion-mnist" and not report.skipped


@needs_fmnist
def test_uneven_test_total_is_stratified(tmp_path):
    info = write_dataset("fashion-mnist", tmp_path / "fm", per_class=1, test=13, seed=0)
    assert info.test_files == 13
    per_class = sorted(len(list(d.glob("*.png"))) for d in (tmp_path / "fm" / "test").iterdir())
    assert per_class == [1] * 7 + [2] * 3


def test_digits_train_and_test_do_not_overlap(tmp_path):
    info = write_dataset("digits", tmp_path / "d", per_class=5, test=30, seed=0)
    assert (info.train_files, info.test_files) == (50, 30)
    train = {p.name for p in (tmp_path / "d" / "train").rglob("*.png")}
    test = {p.name for p in (tmp_path / "d" / "test").rglob("*.png")}
    assert len(train) == 50 and len(test) == 30 and not train & test
    assert check_data(tmp_path / "d").usable


def test_rerun_is_a_no_op_and_other_contents_are_refused(tmp_path, capsys):
    out = tmp_path / "d"
    write_dataset("digits", out, per_class=2, test=10, seed=0)
    before = _tree(out)
    assert main(["datasets", "digits", str(out), "--per-class", "2", "--test", "10"]) == 0
    assert _tree(out) == before
    assert main(["datasets", "digits", str(out), "--per-class", "3", "--test", "10"]) == 2
    assert "different dataset" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    assert main(["datasets", "digits", str(tmp_path / "mine")]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per-class", "500"], "more than the"),
        (["--per-class", "0"], "--per-class must be"),
        (["--test", "-1"], "--test >= 0"),
    ],
)
def test_bad_counts_exit_2(tmp_path, capsys, args, message):
    assert main(["datasets", "digits", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_fashion_mnist_is_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFERKIT_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    assert main(["datasets", "fashion-mnist", str(tmp_path / "fm")]) == 2
    err = capsys.readouterr().err
    assert "dataset-fashion-mnist" in err and err.count("\n") == 1
    assert not (tmp_path / "fm").exists()
