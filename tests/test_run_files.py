"""The run directory's text files hold every file name, even one that is not UTF-8."""

from __future__ import annotations

import json
import os
import sys

import pytest

from helpers import FAST_FIT, make_image_folder
from transferkit.cli import main
from transferkit.run_files import (
    DATA_REPORT,
    PREDICTIONS,
    predictions_csv,
    read_predictions,
    text_path,
)

# b"caf\xe9.png" on Linux: Latin-1 bytes, which Python holds as a lone surrogate.
NON_UTF8 = os.fsdecode(b"caf\xe9.png")


def test_predictions_csv_round_trips_names_that_are_not_utf8(tmp_path):
    rows = [
        {"split": "val", "path": f"data/{NON_UTF8}", "label": 0, "probs": [0.9, 0.1]},
        {"split": "test", "path": r"C:\photos\x.png", "label": 1, "probs": [0.2, 0.8]},
    ]
    text = predictions_csv(rows, [os.fsdecode(b"r\xf6d"), "blue"])
    # UTF-8 text, written the way the run writes it (a strict encode).
    (tmp_path / PREDICTIONS).write_bytes(text.encode("utf-8"))
    assert "data/caf\\udce9.png" in text
    back = read_predictions(tmp_path)
    assert [r["path"] for r in back] == [f"data/{NON_UTF8}", r"C:\photos\x.png"]
    assert [r["label"] for r in back] == [os.fsdecode(b"r\xf6d"), "blue"]
    assert back[1]["prediction"] == "blue"


def test_text_path_undoes_only_the_escapes_of_undecodable_bytes():
    assert text_path("caf\\udce9.png") == NON_UTF8
    for kept in (r"C:\users\x.png", r"C:\udder\x.png", r"a\ud800.png", r"a\udc7f.png"):
        assert text_path(kept) == kept


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs byte file names")
def test_fit_on_a_file_name_that_is_not_utf8_writes_a_readable_run(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=6, layout="splits", test_per_class=2)
    red = os.fsencode(data / "test" / "red")
    os.rename(os.path.join(red, b"img1000.png"), os.path.join(red, b"caf\xe9.png"))
    with open(os.path.join(red, b"notes\xe9.txt"), "wb") as f:
        f.write(b"not an image")  # a skipped file: its name goes into the data report
    config = tmp_path / "fit.json"
    config.write_text(json.dumps({**FAST_FIT, "head_epochs": 3, "fine_tune_epochs": 1}))
    run = tmp_path / "run"
    args = ["fit", str(data), "--out", str(run), "--config", str(config)]
    args += ["--backbone", "test_resnet", "--weights", "none", "--cache-dir", str(tmp_path / "c")]
    rc = main(args)
    rows = read_predictions(run)
    assert os.path.join(os.fsdecode(red), NON_UTF8) in {r["path"] for r in rows}
    (run / PREDICTIONS).read_text(encoding="utf-8")  # plain UTF-8 for any CSV reader
    report = json.loads((run / DATA_REPORT).read_text(encoding="utf-8"))
    assert os.fsdecode(b"notes\xe9.txt") in json.dumps(report, ensure_ascii=False)
    assert rc == 0


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs byte file names")
def test_predict_prints_a_name_that_is_not_utf8_to_a_strict_terminal(trained, tmp_path):
    """Under a UTF-8 locale stdout refuses lone surrogates; the command escapes them."""
    import shutil
    import subprocess

    folder = os.fsencode(tmp_path / "imgs")
    os.mkdir(folder)
    first = next((trained.data / "test" / "red").iterdir())
    shutil.copy(first, os.path.join(folder, b"caf\xe9.png"))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "TRANSFERKIT_PROGRESS": "0"}
    command = [sys.executable, "-m", "transferkit", "predict", str(trained.run)]
    for fmt in ("table", "csv", "json"):
        done = subprocess.run(
            [*command, os.fsdecode(folder), "--format", fmt],
            env=env,
            capture_output=True,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert b"caf\\udce9.png" in done.stdout, fmt
