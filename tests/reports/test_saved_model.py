"""The report agrees with the saved model: the epoch it marks is the one whose weights
were kept, the accuracies it quotes are metrics.json's, the times it shows add up, and
a validation split too small to mean much is said to be so.

Most tests write a run directory by hand (milliseconds); one fits a real tiny run
whose fine-tuning is made to fail, so the head's weights are the ones saved."""

from __future__ import annotations

import json

import pytest
from scipy.stats import binomtest

from chromium import texts_by_id
from transferkit.reports.history import saved_epoch
from transferkit.reports.run_report import write_run_report
from transferkit.reports.stats import wilson_interval
from transferkit.runs import history_csv, predictions_csv

CLASSES = ["cat", "dog"]


def _row(epoch, phase, phase_epoch, train_acc, val_acc, val_loss, seconds=0.5):
    return {"phase": phase, "epoch": epoch, "phase_epoch": phase_epoch,
            "train_loss": 1.0 / epoch, "train_acc": train_acc, "val_loss": val_loss,
            "val_acc": val_acc, "lr": 1e-3, "seconds": seconds}  # fmt: skip


def _phase(name, epochs_run, best_epoch, seconds, stopped="early stopping"):
    return {"name": name, "epochs_run": epochs_run, "best_epoch": best_epoch,
            "seconds": seconds, "stopped": stopped}  # fmt: skip


def head_kept_history() -> list[dict]:
    """Head: best at epoch 3 (lowest loss). Fine-tuning reaches a lower loss at epoch 7
    but never the head's validation accuracy, so the head's weights are kept."""
    head = [(0.60, 0.60, 1.00), (0.70, 0.75, 0.70), (0.80, 0.85, 0.50), (0.85, 0.85, 0.52),
            (0.88, 0.85, 0.55)]  # fmt: skip
    fine = [(0.90, 0.80, 0.45), (0.93, 0.80, 0.40), (0.95, 0.78, 0.42)]
    rows = [_row(e, "head", e, *v) for e, v in enumerate(head, 1)]
    rows += [_row(5 + e, "fine-tune", e, *v) for e, v in enumerate(fine, 1)]
    return rows


HEAD_KEPT_PHASES = [_phase("head", 5, 3, 1.234), _phase("fine-tune", 3, 0, 5.678, "max epochs")]


def write_run(run, history, phases, *, n_val=40, n_test=0, predictions=(), **metrics):
    run.mkdir(parents=True)
    config = {"classes": CLASSES, "fit": {"strategy": "fine-tune"}}
    (run / "config.json").write_text(json.dumps(config))
    record = {"strategy": "fine-tune", "backbone": "resnet18", "n_val": n_val,
              "n_test": n_test, "phases": phases, **metrics}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(record))
    (run / "history.csv").write_text(history_csv(history))
    if predictions:
        (run / "predictions.csv").write_text(predictions_csv(list(predictions), CLASSES))
    return run


def page_of(run) -> tuple[str, dict[str, str]]:
    page = write_run_report(run, plots=False).read_text(encoding="utf-8")
    return page, texts_by_id(page)


def test_saved_epoch_follows_the_phases_not_the_lowest_loss():
    history = head_kept_history()
    assert saved_epoch(history, HEAD_KEPT_PHASES) == (3, "head")
    kept = [HEAD_KEPT_PHASES[0], _phase("fine-tune", 3, 2, 5.0)]
    assert saved_epoch(history, kept) == (7, "fine-tune")  # head epochs come first
    assert saved_epoch(history, [_phase("head", 5, 0, 1.0)]) is None  # never improved


def test_report_marks_the_head_epoch_when_fine_tuning_kept_the_head_weights(tmp_path):
    run = write_run(tmp_path / "run", head_kept_history(), HEAD_KEPT_PHASES,
                    val_accuracy=0.85, seconds_total=9.0)  # fmt: skip
    _, text = page_of(run)
    assert text["card-saved-epoch"].startswith("3 ")  # not 7, where the loss was lowest
    assert "head phase" in text["card-saved-epoch"]
    sentence = text["overfitting"]
    assert "epoch 3 (head phase)" in sentence
    assert "the fine-tune phase never beat them on validation" in sentence
    assert "85.0%" in sentence  # the saved model's accuracy, from metrics.json
    assert "78.0%" not in sentence  # not the last epoch's, whose weights were dropped
    assert text["card-val-accuracy"].startswith("85.0%")


def test_report_marks_the_epoch_early_stopping_kept_in_a_one_phase_run(tmp_path):
    """Early stopping wants a relative improvement: epochs 3-4 crept lower by less, so
    the weights of epoch 2 were kept though the lowest loss is at epoch 4."""
    losses = [1.0, 0.6, 0.5996, 0.5994]
    history = [_row(e, "head", e, 0.8, 0.9, v) for e, v in enumerate(losses, 1)]
    run = write_run(tmp_path / "run", history, [_phase("head", 4, 2, 0.4)], val_accuracy=0.9)
    _, text = page_of(run)
    assert text["card-saved-epoch"].startswith("2 ")
    assert "epoch 2 (head phase)" in text["overfitting"]


def test_phase_times_add_up_to_the_total_in_metrics_json(tmp_path):
    run = write_run(tmp_path / "run", head_kept_history(), HEAD_KEPT_PHASES,
                    val_accuracy=0.85, seconds_total=9.0)  # fmt: skip
    _, text = page_of(run)
    assert "1.23 s" in text["time-phase-head"] and "5.68 s" in text["time-phase-fine-tune"]
    assert "2.09 s" in text["time-other"]  # 9.00 - 1.23 - 5.68
    assert "9.00 s" in text["time-total"]
    assert "feature extraction" in text["time-other"]
    # The training section quotes the same phase times (not the per-epoch sums, 2.5 s
    # and 1.5 s, which leave out each phase's set-up and its starting validation).
    assert "head: 5 epochs, 1.23 s" in text["phase-times"]
    assert "fine-tune: 3 epochs, 5.68 s" in text["phase-times"]


def test_times_of_a_resumed_run_do_not_show_a_negative_rest(tmp_path):
    """A resumed phase counts its time before the interruption; the total does not."""
    run = write_run(tmp_path / "run", head_kept_history(), HEAD_KEPT_PHASES,
                    val_accuracy=0.85, seconds_total=3.0)  # fmt: skip
    _, text = page_of(run)
    assert "-" not in text["time-other"].replace("—", "")
    assert "resumed" in text["time-other"]


def test_wilson_interval_matches_scipy():
    for k, n in [(10, 12), (3, 3), (0, 5), (360, 400), (1, 1)]:
        expected = binomtest(k, n).proportion_ci(method="wilson")
        low, high = wilson_interval(k / n, n)
        assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert wilson_interval(0.5, 0) is None


def test_a_tiny_validation_split_is_said_to_be_too_small(tmp_path):
    history = head_kept_history()
    run = write_run(tmp_path / "run", history, HEAD_KEPT_PHASES, n_val=3, val_accuracy=1.0)
    _, text = page_of(run)
    card = text["card-val-accuracy"]
    assert card.startswith("100.0%")
    assert "3 images" in card and "95% interval 43.9–100.0%" in card
    assert "too few" in card
    assert "only 3 validation images" in text["overfitting"]


def test_a_large_validation_split_gets_its_interval_and_no_warning(tmp_path):
    history = head_kept_history()
    run = write_run(tmp_path / "run", history, HEAD_KEPT_PHASES, n_val=400, val_accuracy=0.9)
    _, text = page_of(run)
    card = text["card-val-accuracy"]
    assert card.startswith("90.0%") and "400 images" in card
    assert "95% interval 86.7–92.6%" in card and "too few" not in card
    assert "validation images" not in text["overfitting"]


def test_a_small_evaluated_split_is_flagged_in_the_evaluation_section(tmp_path):
    rows = [{"split": "test", "path": f"/nowhere/{i}.png", "label": i % 2,
             "probs": [0.8, 0.2] if i < 7 else [0.3, 0.7]} for i in range(10)]  # fmt: skip
    run = write_run(tmp_path / "run", head_kept_history(), HEAD_KEPT_PHASES, n_test=10,
                    predictions=rows, val_accuracy=0.85, test_accuracy=0.6)  # fmt: skip
    _, text = page_of(run)
    assert text["card-test-accuracy"].startswith("60.0%")
    assert "10 images" in text["card-test-accuracy"]
    assert "only 10 images" in text["small-split"]
    assert "95% interval" in text["eval-accuracy"]


def test_a_real_run_that_kept_the_head_weights_is_reported_as_such(tmp_path):
    """Fine-tuning at a rate far too high wrecks the model; the run keeps the head's
    best weights, and the report must name that epoch and quote that model's accuracy."""
    from helpers import make_image_folder
    from transferkit.estimator import TransferClassifier
    from transferkit.run_files import read_history

    data = make_image_folder(tmp_path / "data", per_class=6, size=16)
    clf = TransferClassifier(
        "test_resnet", "fine-tune", cache_dir=str(tmp_path / "cache"), weights="none",
        image_size=16, lr=1.0, fine_tune_lr=0.1, epochs=30, patience=3, fine_tune_epochs=2,
        batch_size=8, workers=0, seed=0,
    )  # fmt: skip
    run = tmp_path / "run"
    clf.fit(data, run_dir=run)
    record = json.loads((run / "metrics.json").read_text())
    head, fine = record["phases"]
    assert fine["best_epoch"] == 0, "precondition: fine-tuning never beat the head"
    _, text = page_of(run)
    assert text["card-saved-epoch"].startswith(f"{head['best_epoch']} ")
    row = next(r for r in read_history(run) if r["epoch"] == head["best_epoch"])
    assert row["phase"] == "head"
    assert row["val_acc"] == pytest.approx(record["val_accuracy"])  # the saved weights
    assert f"{record['val_accuracy']:.1%}" in text["overfitting"]
    assert text["card-val-accuracy"].startswith(f"{record['val_accuracy']:.1%}")


def test_odd_values_in_metrics_json_do_not_break_the_report(tmp_path):
    """A hand-edited or older metrics.json: the report shows what it can, no traceback."""
    phases = [{"name": "head", "epochs_run": "five", "best_epoch": None, "seconds": "?"}, "x"]
    run = write_run(tmp_path / "run", head_kept_history(), phases, n_val="12",
                    val_accuracy="high", seconds_total=None)  # fmt: skip
    _, text = page_of(run)
    assert "card-val-accuracy" not in text
    assert text["card-saved-epoch"].startswith("7 ")  # no phase says: the lowest loss
    assert "best validation epoch" in text["card-saved-epoch"]
    assert "head phase" in text["time-phase-head"] and "—" in text["time-phase-head"]
