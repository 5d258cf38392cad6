"""report.html built from a run directory's files alone, and rebuilt by `transferkit report`.

Most tests use a hand-written run directory (no model needed, milliseconds); the last
one renders a real run's report in headless Chromium."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main
from transferkit.errors import InputError
from transferkit.reports.run_report import run_report_content, unfreeze_epoch, write_run_report
from transferkit.runs import history_csv, predictions_csv

CLASSES = ["cat", "dog", "fox"]


def _history():
    rows = []
    for epoch in range(1, 7):
        phase = "head" if epoch <= 3 else "fine-tune"
        rows.append({"phase": phase, "epoch": epoch, "phase_epoch": (epoch - 1) % 3 + 1,
                     "train_loss": 1 / epoch, "train_acc": 1 - 0.3 / epoch, "val_loss": 1.2 / epoch,
                     "val_acc": 0.9 - 0.3 / epoch, "lr": 1e-2 if epoch <= 3 else 1e-4,
                     "seconds": 0.5})  # fmt: skip
    return rows


def _write_run(run, *, with_predictions=True, decision=True):
    run.mkdir(parents=True)
    images = run.parent / "images"
    images.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = i % 3
        probs = rng.dirichlet(np.ones(3) * 0.5)
        path = images / f"{i}.png"
        if i != 1:  # one image has gone missing since training
            Image.new("RGB", (10, 10), (20 * i, 100, 50)).save(path)
        rows.append({"split": "test" if i < 9 else "val", "path": str(path), "label": label,
                     "probs": probs.tolist()})  # fmt: skip
    (run / "config.json").write_text(
        json.dumps({"classes": CLASSES, "fit": {"strategy": "fine-tune", "epochs": 3}})
    )
    metrics = {
        "strategy": "fine-tune",
        "backbone": "resnet18",
        "phases": [
            {"name": "head", "epochs_run": 3, "seconds": 1.5, "stopped": "max epochs"},
            {"name": "fine-tune", "epochs_run": 3, "seconds": 1.5, "stopped": "early"},
        ],
        "seconds_total": 4.2,
    }  # fmt: skip
    if decision:
        metrics["decision"] = {
            "strategy": "fine-tune",
            "reason": "large & similar <data>",
            "scores": {cut: {"logme": 0.1 * i, "knn_accuracy": 0.5, "seconds": {"logme": 0.01}}
                       for i, cut in enumerate(["blocks.1", "blocks.2"])},
        }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "history.csv").write_text(history_csv(_history()))
    (run / "data_report.json").write_text(json.dumps({"usable": True, "skipped": []}))
    if with_predictions:
        (run / "predictions.csv").write_text(predictions_csv(rows, CLASSES))
    return run, rows


def test_report_holds_every_section_from_the_run_files(tmp_path):
    run, rows = _write_run(tmp_path / "run")
    path = write_run_report(run)
    page = path.read_text()
    assert path == run / "report.html"
    for anchor in ("training", "strategy", "evaluation", "mistakes", "data", "timings", "config"):
        assert f'<section id="{anchor}">' in page, anchor
    assert "evaluated on the test split, 9 images" in page  # test rows win over val rows
    assert "The base was unfrozen at epoch 4" in page
    assert "large &amp; similar &lt;data&gt;" in page
    assert "fine-tune phase (3 epochs, stopped: early)" in page
    # per-layer scores as one table: a row per layer, the nested timings left out
    assert "<th>layer</th><th>logme</th><th>knn_accuracy</th></tr>" in page
    assert "<td>blocks.2</td>" in page
    test = [r for r in rows if r["split"] == "test"]
    wrong = [r for r in test if int(np.argmax(r["probs"])) != r["label"]]
    shown = min(len(wrong), 16)
    missing = sum(1 for r in wrong if not r["path"].endswith("/1.png"))
    mistakes = page.split('<section id="mistakes">')[1].split("</section>")[0]
    assert mistakes.count('class="thumb"') == missing
    assert mistakes.count("image unavailable") == shown - missing
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "confusion.png", "curves.png", "mistakes.png", "per_class.png"
    ]  # fmt: skip


def test_report_without_predictions_or_decision_still_renders(tmp_path):
    run, _ = _write_run(tmp_path / "run", with_predictions=False, decision=False)
    content = run_report_content(run)
    assert content["metrics"] is None and content["mistakes"] is None
    assert "set in the fit configuration (strategy=fine-tune)" in content["decision"]["reason"]
    page = write_run_report(run, plots=False).read_text()
    assert '<section id="evaluation">' not in page and '<section id="training">' in page
    assert not (run / "plots").exists()


def test_unfreeze_epoch_is_the_first_fine_tune_epoch():
    assert unfreeze_epoch(_history()) == 4
    assert unfreeze_epoch([r for r in _history() if r["phase"] == "head"]) is None


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(InputError, match="not a transferkit run directory"):
        write_run_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_report_command_rebuilds_the_report_of_a_real_run(trained, tmp_path, capsys):
    run = trained.copy(tmp_path / "run")
    (run / "report.html").unlink(missing_ok=True)
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    page = (run / "report.html").read_text()
    assert "evaluated on the test split, 10 images" in page
    assert re.search(r"The base was unfrozen at epoch \d+", page)
    assert "mislabelled.png" in page  # the red image filed under blue is the top mistake
    assert page.index("mislabelled.png") < page.index("</section>", page.index('id="mistakes"'))


@pytest.mark.slow
def test_a_real_runs_report_renders_in_headless_chromium(trained, tmp_path):
    from chromium import Chromium, find_browser

    executable = find_browser()
    if executable is None:
        pytest.skip("chromium is not installed (see tests/chromium.py)")
    run = trained.copy(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    (tmp_path / "chromium").mkdir()  # the browser's log goes beside its profile
    browser = Chromium(executable, tmp_path / "chromium" / "profile")
    try:
        page, errors = browser.check((run / "report.html").as_uri())
    finally:
        browser.close()
    assert errors == []
    assert page["scripts"] == 0 and page["fetched"] == []
    alts = [i["alt"] for i in page["images"]]
    assert len(alts) >= 4  # curves, confusion, per-class F1, and at least one mistake
    assert any(a.startswith("Training curves") for a in alts)
    assert "Confusion matrix" in alts
    assert any(a.startswith("true blue, predicted") for a in alts)
    broken = [i["alt"] for i in page["images"] if not (i["complete"] and i["width"] > 0)]
    assert broken == []
