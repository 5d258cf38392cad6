"""`evaluate`: the test split when DATA has one, every metric in --json, clear refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix

from helpers import make_image_folder
from transferkit.cli import main
from transferkit.errors import InputError
from transferkit.evaluation import evaluate_predictor, evaluation_examples
from transferkit.predict import load_predictor


@pytest.fixture(scope="module")
def predictor(trained):
    return load_predictor(trained.run)


def test_evaluate_json_has_every_metric(trained, capsys):
    assert main(["evaluate", str(trained.run), str(trained.data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "balanced_accuracy", "top_k_accuracy", "per_class", "confusion", "ece"):
        assert key in doc, key
    assert doc["split"] == "test" and doc["n"] == 10  # 3 per class + the mislabelled one
    assert [c["name"] for c in doc["per_class"]] == trained.classes
    assert set(doc["per_class"][0]) == {"name", "precision", "recall", "f1", "support"}
    assert sum(c["support"] for c in doc["per_class"]) == 10
    assert np.array(doc["confusion"]).sum() == 10
    assert 0.0 <= doc["ece"] <= 1.0
    assert doc["top_k_accuracy"]["1"] == doc["accuracy"]


def test_metrics_are_those_of_the_predictions(trained, predictor):
    ev = evaluate_predictor(predictor, trained.data)
    paths, labels, split, _ = evaluation_examples(trained.data, trained.classes)
    done, probs, failures = predictor.predict_proba_files(paths)
    assert done == paths and not failures and split == "test"
    pred = probs.argmax(1)
    assert ev.metrics.accuracy == pytest.approx(accuracy_score(labels, pred))
    assert ev.metrics.confusion == confusion_matrix(labels, pred, labels=[0, 1, 2]).tolist()
    assert ev.metrics.accuracy < 1.0  # the red image filed under blue is a mistake


def test_evaluate_text_output(trained, capsys):
    assert main(["evaluate", str(trained.run), str(trained.data)]) == 0
    out = capsys.readouterr().out
    assert "on the test split of" in out and "10 images" in out
    assert "balanced accuracy" in out and "calibration error (ECE)" in out
    assert "confusion matrix (columns: 0=blue  1=green  2=red)" in out


def test_a_flat_folder_is_evaluated_whole_and_bad_files_are_skipped(trained, predictor, tmp_path):
    data = make_image_folder(tmp_path / "flat", classes=("red", "blue"), per_class=2, seed=3)
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    ev = evaluate_predictor(predictor, data)
    assert ev.split == "all" and ev.metrics.n == 4
    assert [s["path"] for s in ev.skipped] == ["red/broken.png"]
    assert ev.metrics.per_class[1].support == 0  # green: absent from DATA, still listed


def test_a_class_the_model_does_not_know_is_refused(trained, tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", classes=("red", "purple"), per_class=2)
    assert main(["evaluate", str(trained.run), str(data)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "transferkit: error: DATA has class 'purple', which the model was not trained on; "
        "its classes are: blue, green, red\n"
    )


def test_data_with_no_usable_image_is_refused(trained, predictor, tmp_path):
    (tmp_path / "d" / "red").mkdir(parents=True)
    (tmp_path / "d" / "red" / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="no usable images to evaluate"):
        evaluate_predictor(predictor, tmp_path / "d")
    shutil.rmtree(tmp_path / "d")
    with pytest.raises(InputError, match="does not exist"):
        evaluate_predictor(predictor, tmp_path / "d")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX named pipes")
def test_a_named_pipe_in_data_is_skipped_unopened(trained, predictor, tmp_path):
    data = make_image_folder(tmp_path / "flat", classes=("red", "blue"), per_class=2, seed=3)
    os.mkfifo(data / "red" / "pipe.png")  # opening it would wait for a writer forever
    (data / "list.csv").write_text("path,label\nred/pipe.png,red\nblue/img0.png,blue\n")
    signal.alarm(60)  # a hang kills the test process rather than the whole suite waiting
    try:
        folder, listed = (
            evaluate_predictor(predictor, data),
            evaluate_predictor(predictor, data / "list.csv"),
        )
    finally:
        signal.alarm(0)
    assert folder.metrics.n == 4 and listed.metrics.n == 1
    for ev in (folder, listed):
        assert [s["reason"] for s in ev.skipped if "pipe" in s["path"]] == [
            "not a regular file (folder, device, pipe or socket)"
        ]
