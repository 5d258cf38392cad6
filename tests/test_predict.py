"""`predict`: inputs expand from files, folders and globs; unreadable files are listed
with the reason and the rest still predicted; exit 0 when anything was predicted."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import sys

import numpy as np
import pytest
import torch

from transferkit.cli import PREDICT_FORMATS, main
from transferkit.errors import InputError
from transferkit.predict import Failure, Predictor, expand_inputs, load_predictor
from transferkit.reports.text import PREDICT_FORMATS as RENDERED_FORMATS


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


# ------------------------------------------------------------------ expand_inputs


def test_folders_recurse_globs_expand_and_repeats_are_dropped(tmp_path):
    a = _touch(tmp_path / "d" / "a.png")
    b = _touch(tmp_path / "d" / "sub" / "b.JPG")
    c = _touch(tmp_path / "e" / "c.webp")
    _touch(tmp_path / "d" / ".DS_Store")  # litter: passed over silently
    _touch(tmp_path / "d" / ".hidden" / "h.png")
    notes = _touch(tmp_path / "d" / "notes.txt")
    paths, failures = expand_inputs([tmp_path / "d", str(tmp_path / "e" / "*.webp"), a])
    assert paths == [a, b, c]
    assert failures == [Failure(notes, "not an image: unknown extension '.txt'")]


def test_recursive_glob_and_inputs_that_name_nothing(tmp_path):
    a = _touch(tmp_path / "x" / "y" / "a.png")
    paths, failures = expand_inputs(
        [str(tmp_path / "**" / "*.png"), str(tmp_path / "none*.png"), str(tmp_path / "gone.png")]
    )
    assert paths == [a]
    assert [f.reason for f in failures] == ["no file matches this pattern", "file not found"]


def test_a_file_named_directly_is_tried_whatever_its_extension(tmp_path):
    odd = _touch(tmp_path / "photo.data")
    empty = tmp_path / "empty"
    empty.mkdir()
    paths, failures = expand_inputs([odd, empty])
    assert paths == [odd]
    assert failures == [Failure(str(empty), "folder holds no image files")]


# ---------------------------------------------------------------------- Predictor


def _fake(classes, logits, binary=False, batch_size=2):
    """A predictor whose model returns fixed logits per image (by batch position)."""
    rows = iter(np.asarray(logits, dtype=np.float32))
    return Predictor(
        classes=classes,
        transform=lambda img: torch.zeros(3, 4, 4),
        logits_fn=lambda x: np.stack([next(rows) for _ in range(len(x))]),
        binary=binary,
        source="fake",
        batch_size=batch_size,
    )


def _pngs(tmp_path, n):
    from PIL import Image

    out = []
    for i in range(n):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (4, 4), (i, 0, 0)).save(p)
        out.append(str(p))
    return out


def test_top_k_is_ordered_and_clipped_to_the_class_count(tmp_path):
    files = _pngs(tmp_path, 3)
    predictor = _fake(["a", "b", "c"], [[0, 2, 1], [3, 0, 0], [0, 0, 0]])
    result = predictor.predict(files, top_k=5)
    assert [p.label for p in result.predictions] == ["b", "a", "a"]  # a tie goes to the first
    first = result.predictions[0]
    assert [c for c, _ in first.top_k] == ["b", "c", "a"]
    assert sum(p for _, p in first.top_k) == pytest.approx(1.0)
    assert first.confidence == first.top_k[0][1]
    with pytest.raises(InputError, match="top-k"):
        predictor.predict(files, top_k=0)


def test_binary_head_uses_a_sigmoid_of_its_single_logit(tmp_path):
    (file,) = _pngs(tmp_path, 1)
    result = _fake(["no", "yes"], [[np.log(3.0)]], binary=True).predict([file], top_k=2)
    assert result.predictions[0].label == "yes"
    assert result.predictions[0].top_k[0][1] == pytest.approx(0.75)
    assert result.predictions[0].top_k[1] == ("no", pytest.approx(0.25))


def test_unreadable_files_are_failures_and_the_batch_goes_on(tmp_path):
    good = _pngs(tmp_path, 3)
    bad = _touch(tmp_path / "bad.png", b"\x89PNG\r\n\x1a\n truncated")
    predictor = _fake(["a", "b"], [[1, 0], [0, 1], [1, 0]], batch_size=2)
    result = predictor.predict([good[0], bad, good[1], good[2]])
    assert [p.path for p in result.predictions] == good
    assert [f.path for f in result.failures] == [bad]
    assert "Truncated File Read" in result.failures[0].reason
    assert not result.failures[0].reason.startswith(bad)  # the path is not repeated


def test_load_predictor_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_predictor(tmp_path / "nothing")
    with pytest.raises(InputError, match=r"not a run directory, an \.onnx file"):
        load_predictor(_touch(tmp_path / "model.bin"))
    with pytest.raises(InputError, match="no sidecar"):
        load_predictor(_touch(tmp_path / "model.onnx"))
    with pytest.raises(InputError, match="not a transferkit run directory"):
        load_predictor(tmp_path)


def test_cli_and_renderer_agree_on_the_formats():
    assert PREDICT_FORMATS == RENDERED_FORMATS


class Hung(BaseException):
    """Raised by the alarm; no ``except Exception`` in the code under test catches it."""


@contextlib.contextmanager
def _at_most(seconds: int):
    """Fail instead of hanging: the alarm interrupts an open blocked on a pipe."""

    def give_up(*_):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and sockets")
def test_pipes_and_sockets_are_failures_and_never_opened(tmp_path):
    good = _pngs(tmp_path, 1)
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sub" / "sock.png"))
    predictor = _fake(["a", "b"], [[1, 0]])
    inputs = [str(tmp_path / "fifo.png"), str(tmp_path / "sub"), str(tmp_path / "*.png")]
    with _at_most(10), contextlib.closing(sock):
        result = predictor.predict(inputs)
    assert [p.path for p in result.predictions] == good
    assert [(os.path.basename(f.path), f.reason) for f in result.failures] == [
        ("fifo.png", "not a regular file (a named pipe)"),
        ("pipe.png", "not a regular file (a named pipe)"),
        ("sock.png", "not a regular file (a socket)"),
    ]
    with _at_most(10), pytest.raises(InputError, match=r"fifo\.png: not a regular file"):
        predictor.predict_proba([str(tmp_path / "fifo.png")])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX named pipes")
def test_a_model_file_that_is_a_named_pipe_is_refused_unopened(tmp_path):
    model = tmp_path / "model.onnx"
    os.mkfifo(model)
    sidecar = {
        "classes": ["a", "b"],
        "binary": False,
        "preprocessing": {"data_config": {"input_size": [3, 4, 4]}},
        "sha256": "0" * 64,
    }
    (tmp_path / "model.onnx.json").write_text(json.dumps(sidecar))
    with _at_most(10), pytest.raises(InputError) as err:
        load_predictor(model)
    assert str(err.value) == f"model {str(model)!r} is a named pipe, not a file"


# ------------------------------------------------------- CLI on a real (tiny) run


@pytest.fixture
def mixed_folder(tmp_path, trained):
    """Three good test images, a truncated PNG, a text file renamed .jpg, and notes."""
    folder = tmp_path / "mixed"
    good = sorted((trained.data / "test" / "red").glob("img*.png"))
    for i, src in enumerate(good):
        (folder / "sub" if i else folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, (folder / "sub" if i else folder) / f"good{i}.png")
    png = good[0].read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "sub" / "fake.jpg").write_text("not a picture")
    (folder / "notes.txt").write_text("hello")
    return folder


def test_predict_on_a_mixed_folder_predicts_the_good_and_lists_the_bad(
    trained, mixed_folder, capsys
):
    rc = main(["predict", str(trained.run), str(mixed_folder), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert rc == 0
    rows = out.strip().splitlines()
    assert rows[0].split() == [
        "path", "prediction", "confidence", "unknown", "ood_score", "prediction_set",
        "class_2", "probability_2",
    ]  # fmt: skip
    predicted = {line.split()[0]: line.split()[1] for line in rows[1:]}
    assert sorted(predicted) == sorted(str(p) for p in mixed_folder.rglob("good*.png"))
    assert set(predicted.values()) == {"red"}
    lines = err.strip().splitlines()
    assert f"{mixed_folder / 'truncated.png'}: truncated or corrupt image" in err
    assert f"{mixed_folder / 'sub' / 'fake.jpg'}: not an image" in err
    assert f"{mixed_folder / 'notes.txt'}: not an image" in err
    assert lines[-1] == "transferkit: 3 predicted, 3 could not be (listed above)"
    assert "Traceback" not in err


def test_predict_json_and_csv(trained, mixed_folder, capsys):
    assert main(["predict", str(trained.run), str(mixed_folder), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["predictions"]) == 3 and len(doc["failures"]) == 3
    assert doc["predictions"][0]["top_k"][0]["class"] == doc["predictions"][0]["prediction"]
    assert {f["path"] for f in doc["failures"]} >= {str(mixed_folder / "truncated.png")}

    args = ["predict", str(trained.run), str(mixed_folder), "--format", "csv", "--top-k", "3"]
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3
    assert {r["prediction"] for r in rows} == {"red"}
    for r in rows:
        total = float(r["confidence"]) + float(r["probability_2"]) + float(r["probability_3"])
        assert total == pytest.approx(1.0, abs=1e-5)


def test_predict_exits_2_when_nothing_could_be_predicted(trained, mixed_folder, capsys):
    bad = [str(mixed_folder / "truncated.png"), str(mixed_folder / "missing.png")]
    rc = main(["predict", str(trained.run), *bad])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{bad[0]}: truncated or corrupt image")
    assert lines[1:] == [
        f"{bad[1]}: file not found",
        "transferkit: error: nothing could be predicted (2 input(s) failed)",
    ]
