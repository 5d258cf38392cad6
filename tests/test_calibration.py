"""Temperature scaling: fitted on held-out predictions after training, stored in the
run's weights, applied by predict, the Python API and exported models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from transferkit.atomic import file_sha256
from transferkit.calibration import (
    MAX_TEMPERATURE,
    calibration_fields,
    fit_temperature,
    rescale,
)
from transferkit.cli import main
from transferkit.heads import ClassifierHead
from transferkit.predict import load_predictor
from transferkit.runs import load_run


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = torch.as_tensor(logits / t, dtype=torch.float64)
    return float(torch.nn.functional.cross_entropy(z, torch.as_tensor(labels)))


def _overconfident(n: int = 400, seed: int = 0):
    """Logits that say ~99.9% while the model is right ~70% of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 4)
    logits = rng.normal(0, 0.5, (n, 4))
    logits[np.arange(n), predicted] += 8.0
    return logits, labels


def test_the_fitted_temperature_lowers_held_out_nll_of_an_overconfident_model():
    logits, labels = _overconfident()
    fit = fit_temperature(logits, labels)
    assert fit.reason is None and fit.images == len(labels)
    assert fit.temperature > 2  # softens
    assert _nll(logits, labels, fit.temperature) < 0.5 * _nll(logits, labels, 1.0)
    for t in (fit.temperature * 0.9, fit.temperature * 1.1):  # and it is the minimum
        assert _nll(logits, labels, fit.temperature) <= _nll(logits, labels, t)


def test_an_underconfident_model_is_sharpened_and_the_bounds_hold():
    logits, labels = _overconfident()
    fit = fit_temperature(logits / 40, labels)  # the same model, far too unsure
    assert fit.temperature < 1
    always_wrong = np.tile(np.eye(3)[[1, 2, 0, 1]] * 5.0, (10, 1))
    top = fit_temperature(always_wrong, np.tile([0, 1, 2, 0], 10)).temperature
    assert top == pytest.approx(MAX_TEMPERATURE)


def test_nothing_to_fit_on_gives_one_with_the_reason():
    none = fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert (none.temperature, none.images) == (1.0, 0)
    assert "no held-out images" in none.reason
    one = fit_temperature(np.random.default_rng(0).normal(size=(40, 3)), np.zeros(40, dtype=int))
    assert one.temperature == 1.0 and "one class" in one.reason
    # every one right: the NLL falls all the way to T = 0, there is nothing to fit
    perfect = fit_temperature(np.tile(np.eye(3) * 5.0, (12, 1)), np.tile([0, 1, 2], 12))
    assert perfect.temperature == 1.0 and "predicted right" in perfect.reason
    # a handful of images: a temperature from them would be noise
    logits, labels = _overconfident(n=12)
    few = fit_temperature(logits, labels)
    assert few.temperature == 1.0 and "too few" in few.reason and few.images == 12


def test_probabilities_of_a_binary_head_calibrate_like_its_logit():
    z = np.array([3.0, -2.0, 0.5])
    p = 1 / (1 + np.exp(-z))
    probs = np.stack([1 - p, p], axis=1)
    expected = 1 / (1 + np.exp(-z / 2.5))
    np.testing.assert_allclose(rescale(probs, 2.5)[:, 1], expected, atol=1e-12)


@pytest.mark.parametrize("classes", [2, 4])
def test_the_head_divides_by_its_temperature_and_never_changes_the_class(classes):
    torch.manual_seed(0)
    head = ClassifierHead(8, classes).eval()
    x = torch.randn(64, 8)
    before = head(x)
    head.set_temperature(3.0)
    after = head(x)
    torch.testing.assert_close(after, before / 3.0)
    p0, p1 = head.probabilities(before), head.probabilities(after)
    assert torch.equal(p0.argmax(1), p1.argmax(1))
    assert p1.max(1).values.mean() < p0.max(1).values.mean()  # less confident


def test_weights_saved_without_a_temperature_load_as_uncalibrated():
    head = ClassifierHead(8, 3)
    state = {k: v for k, v in head.state_dict().items() if k != "temperature"}
    fresh = ClassifierHead(8, 3)
    fresh.set_temperature(2.0)
    fresh.load_state_dict(state)  # strict, as load_run is
    assert float(fresh.temperature) == 1.0


def _rewrite_weights(run, change) -> None:
    """Change a run's saved tensors, keeping its recorded digest right."""
    weights = run / "model.safetensors"
    tensors = change(load_file(str(weights)))
    save_file(tensors, str(weights), metadata={"format": "transferkit-run"})
    config = json.loads((run / "config.json").read_text())
    config["weights_sha256"] = file_sha256(weights)
    (run / "config.json").write_text(json.dumps(config))


def test_a_run_saved_before_calibration_loads_with_temperature_one(trained, tmp_path):
    run = trained.copy(tmp_path / "old")
    _rewrite_weights(run, lambda t: {k: v for k, v in t.items() if k != "head.temperature"})
    assert float(load_run(run).model.head.temperature) == 1.0


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """Random-noise images in three classes: a model that cannot be right more than
    by chance, so its 30 held-out predictions (enough to fit a temperature on) hold
    mistakes to calibrate on."""
    from PIL import Image

    from helpers import FAST_FIT
    from transferkit.estimator import TransferClassifier

    root = tmp_path_factory.mktemp("noisy")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / "data" / c).mkdir(parents=True)
        for i in range(50):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "data" / c / f"{i}.png")
    clf = TransferClassifier(
        "test_resnet", "feature-extract", weights="none", cache_dir=str(root / "cache"), **FAST_FIT
    )
    clf.fit(root / "data", run_dir=root / "run")
    return clf, root / "run"


def test_fit_stores_the_temperature_and_metrics_json_reports_ece_before_and_after(noisy_run):
    clf, run = noisy_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["temperature"] != 1.0  # fitted on the 30 validation images
    assert metrics["temperature"] == pytest.approx(float(load_run(run).model.head.temperature))
    assert metrics["ece_split"] == "val"
    assert metrics["ece"] != metrics["ece_uncalibrated"]
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_uncalibrated"] <= 1
    # T minimised the NLL of these very images: lower than before
    lines = (run / "predictions.csv").read_text().splitlines()[1:]
    labels = np.array([["a", "b", "c"].index(r.split(",")[2]) for r in lines])
    calibrated = np.array([[float(v) for v in r.split(",")[-3:]] for r in lines])
    raw = rescale(calibrated, 1 / metrics["temperature"])
    nll = [-np.log(p[np.arange(len(labels)), labels]).mean() for p in (calibrated, raw)]
    assert nll[0] < nll[1]
    # the Python API's model is the calibrated one too
    assert float(clf.model_.head.temperature) == pytest.approx(metrics["temperature"])


def test_calibrated_predictions_keep_the_uncalibrated_class(noisy_run):
    _, run = noisy_run
    rows = [r for r in (run / "predictions.csv").read_text().splitlines()[1:]]
    calibrated = np.array([[float(v) for v in r.split(",")[-3:]] for r in rows])
    t = json.loads((run / "metrics.json").read_text())["temperature"]
    raw = rescale(calibrated, 1 / t)
    assert np.array_equal(raw.argmax(1), calibrated.argmax(1))


def test_calibration_fields_recover_the_uncalibrated_probabilities():
    logits, labels = _overconfident(n=200)
    raw = rescale(np.exp(logits - logits.max(1, keepdims=True)), 1.0)
    calibrated = rescale(raw, 4.0)
    fields = calibration_fields(calibrated, labels, 4.0)
    from transferkit.reports.metrics import expected_calibration_error as ece

    assert fields["ece_uncalibrated"] == pytest.approx(ece(raw, labels), abs=1e-9)
    assert fields["ece"] == pytest.approx(ece(calibrated, labels))
    assert np.array_equal(calibrated.argmax(1), raw.argmax(1))


def _calibrated_copy(trained, dest, temperature: float = 2.5):
    """The shared run with its head's temperature set to ``temperature``."""
    run = trained.copy(dest)
    _rewrite_weights(run, lambda t: {**t, "head.temperature": torch.tensor(temperature)})
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "temperature": temperature}))
    return run


def test_evaluate_json_reports_ece_uncalibrated_next_to_ece(trained, tmp_path, capsys):
    run = _calibrated_copy(trained, tmp_path / "run")
    assert main(["evaluate", str(run), str(trained.data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    keys = list(doc)
    assert keys[keys.index("ece") + 1] == "ece_uncalibrated"
    assert doc["temperature"] == 2.5
    assert main(["evaluate", str(trained.run), str(trained.data), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)  # the same model at T = 1
    assert doc["ece_uncalibrated"] == pytest.approx(plain["ece"], abs=1e-6)
    assert doc["ece"] != pytest.approx(plain["ece"], abs=1e-6)
    assert doc["accuracy"] == plain["accuracy"]


def test_a_fitted_runs_evaluate_agrees_with_its_metrics_json(trained, capsys):
    assert main(["evaluate", str(trained.run), str(trained.data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    metrics = json.loads((trained.run / "metrics.json").read_text())
    assert doc["temperature"] == pytest.approx(metrics["temperature"])
    assert doc["ece"] == pytest.approx(metrics["ece"], abs=1e-4)
    assert doc["ece_uncalibrated"] == pytest.approx(metrics["ece_uncalibrated"], abs=1e-4)


def test_exported_onnx_gives_predicts_calibrated_probabilities(trained, tmp_path, capsys):
    run = _calibrated_copy(trained, tmp_path / "run")
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    temperature = json.loads(out.with_name("model.onnx.json").read_text())["temperature"]
    assert temperature == 2.5
    images = sorted(str(p) for p in (trained.data / "test").rglob("*.png"))
    _, from_run, _ = load_predictor(run).predict_proba_files(images)
    _, from_onnx, _ = load_predictor(out).predict_proba_files(images)
    np.testing.assert_allclose(from_onnx, from_run, rtol=0, atol=1e-4)
    # and they are the calibrated ones, not the raw model's
    raw = rescale(from_run, 1 / temperature)
    assert np.abs(raw - from_run).max() > 1e-3


def test_no_temperature_from_validation_that_was_trained_on(tmp_path, data):
    """Small data: validation pooled into the cross-validated head, its out-of-fold
    probabilities come from the fold models, not the final one: T stays 1."""
    from helpers import FAST_FIT
    from transferkit.estimator import TransferClassifier

    clf = TransferClassifier(
        "test_resnet", "feature-extract", weights="none", cache_dir=str(tmp_path), **FAST_FIT
    ).fit(data, run_dir=tmp_path / "run")
    assert clf.metrics_["selection"]["validation_pooled"] is True
    assert clf.metrics_["temperature"] == 1.0
    assert "trained on" in clf.metrics_["calibration_reason"]


def test_the_report_shows_calibration_with_a_reliability_diagram(noisy_run):
    """A run with a fitted temperature: the Calibration section says ECE before and
    after, and embeds the reliability diagram; its 'before' probabilities are the
    uncalibrated model's."""
    from transferkit.reports.metrics import expected_calibration_error
    from transferkit.reports.run_report import run_report_content, write_run_report

    _, run = noisy_run
    metrics = json.loads((run / "metrics.json").read_text())
    content = run_report_content(run)
    r = content["reliability"]
    assert r["temperature"] == pytest.approx(metrics["temperature"]) != 1.0
    # the diagram's "before": the uncalibrated probabilities whose ECE metrics.json has
    # (from predictions.csv, whose probabilities are rounded)
    before = rescale(r["probabilities"], 1 / r["temperature"])
    ece_before = expected_calibration_error(before, r["labels"])
    assert ece_before == pytest.approx(metrics["ece_uncalibrated"], abs=1e-6)
    page = write_run_report(run).read_text()
    section = page[page.index('<section id="trust">') :]
    section = section[: section.index("</section>")]
    assert "How far to trust it" in section
    assert f"{metrics['ece_uncalibrated']:.4g} before" in section and "after" in section
    # one reliability diagram in the page, then the unknown threshold and the sets
    assert page.count('alt="reliability diagram before and after calibration"') == 1
    assert 'alt="reliability diagram before and after calibration"' in section
    assert "is marked <b>unknown</b>" in section and "Prediction sets" in section


def test_the_report_says_why_no_temperature_was_fitted(tmp_path, data):
    from helpers import FAST_FIT
    from transferkit.estimator import TransferClassifier

    TransferClassifier(
        "test_resnet", "feature-extract", weights="none", cache_dir=str(tmp_path), **FAST_FIT
    ).fit(data, run_dir=tmp_path / "run")
    page = (tmp_path / "run" / "report.html").read_text()
    section = page[page.index('<section id="trust">') :]
    assert "No temperature was fitted (the validation images were trained on" in section
    section = section[: section.index("</section>")]
    assert 'alt="reliability diagram of the model' in section
    assert "before and after calibration" not in section
