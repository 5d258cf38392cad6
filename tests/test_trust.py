"""How far to trust a prediction: the OOD score and its ``unknown`` threshold, the
split-conformal prediction sets, what a run stores of them, and what predict and
evaluate show."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import torch

from helpers import FAST_FIT, make_image_folder
from transferkit.cli import main
from transferkit.errors import InputError
from transferkit.trust import (
    TrustState,
    auroc,
    conformal_quantile,
    load_trust,
    prediction_sets,
    save_trust,
    threshold_for_rate,
)
from transferkit.trust.conformal import nonconformity, set_metrics
from transferkit.trust.ood import fit_feature_stats, ood_scores, out_of_fold_scores

# ----------------------------------------------------------------- conformal


def _exchangeable(rng, n: int, k: int = 4):
    """Probabilities and labels drawn from them: a calibrated model's outputs."""
    logits = rng.normal(0, 1.5, (n, k))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return p, labels


def test_split_conformal_covers_at_the_level_asked_with_the_finite_sample_correction():
    """28 held-out images at 0.9: the ceil(29 * 0.9) = 27th smallest score, so coverage
    is 27/29 = 0.931 on average over calibration sets (the uncorrected 26th: 0.897,
    below what was asked)."""
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(1500):
        p_cal, y_cal = _exchangeable(rng, 28)
        p_new, y_new = _exchangeable(rng, 40)
        q = conformal_quantile(nonconformity(p_cal, y_cal), 0.9)
        covered.append(set_metrics(p_new, y_new, q)["coverage"])
    mean, se = np.mean(covered), np.std(covered) / np.sqrt(len(covered))
    assert mean >= 0.9 - 4 * se  # the guarantee
    assert abs(mean - 27 / 29) <= 4 * se  # exactly what the rank gives


def test_too_few_held_out_scores_give_every_class_and_sets_are_never_empty():
    assert conformal_quantile([0.1] * 8, 0.9) == np.inf  # needs 9 for 0.9
    assert prediction_sets(np.array([[0.2, 0.5, 0.3]]), np.inf) == [[1, 2, 0]]
    assert prediction_sets(np.array([[0.2, 0.5, 0.3]]), 0.0) == [[1]]  # never empty
    assert prediction_sets(np.array([[0.5, 0.45, 0.05]]), 0.6) == [[0, 1]]


def test_the_unknown_threshold_keeps_false_rejections_at_the_rate():
    rng = np.random.default_rng(1)
    rejected = []
    for _ in range(1500):
        t = threshold_for_rate(rng.normal(size=39), 0.05)
        rejected.append(np.mean(rng.normal(size=50) > t))
    assert np.mean(rejected) <= 0.05 + 4 * np.std(rejected) / np.sqrt(len(rejected))
    assert threshold_for_rate([1.0] * 18, 0.05) == np.inf  # needs 19 for 0.05


# ---------------------------------------------------------------------- ood


def test_auroc_counts_ties_half_and_orders_by_score():
    assert auroc([0, 1], [2, 3]) == 1.0
    assert auroc([2, 3], [0, 1]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([], [1]) is None


def _clusters(rng, n=60, d=16):
    centres = rng.normal(0, 1, (3, d))
    y = np.repeat(np.arange(3), n)
    return centres[y] + rng.normal(0, 0.1, (len(y), d)), y


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_feature_scores_tell_unseen_directions_from_the_training_classes(method):
    rng = np.random.default_rng(2)
    x, y = _clusters(rng)
    stats = fit_feature_stats(x, y, 3, method)
    known = ood_scores(method, None, x[::3] + rng.normal(0, 0.1, x[::3].shape), stats)
    unknown = ood_scores(method, None, rng.normal(0, 1, (40, x.shape[1])), stats)
    assert auroc(known, unknown) > 0.99


def test_logit_scores_rank_a_confident_image_as_more_known():
    z = np.array([[9.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    for method in ("energy", "max_logit", "msp"):
        s = ood_scores(method, z, None)
        assert s[0] < s[1], method


def test_out_of_fold_scores_are_like_held_out_ones():
    rng = np.random.default_rng(3)
    x, y = _clusters(rng, n=40)
    oof = out_of_fold_scores("mahalanobis", x, y, 3)
    in_sample = ood_scores("mahalanobis", None, x, fit_feature_stats(x, y, 3))
    assert oof.mean() > in_sample.mean()  # an image's own statistics flatter it


# -------------------------------------------------------------------- state


def test_trust_state_round_trips_and_recomputes_thresholds_without_a_refit(tmp_path):
    stats = fit_feature_stats(np.eye(4), [0, 1, 0, 1], 2)
    state = TrustState(ood_held_out=list(range(40)), conformal_held_out=list(np.linspace(0, 1, 40)))
    state.stats = stats
    save_trust(tmp_path, state)
    back = load_trust(tmp_path)
    assert back.threshold == state.threshold == 38  # ceil(41 * 0.95) = 39th smallest
    assert set(back.stats) == {"means", "precision"}
    looser = back.with_settings(unknown_rate=0.5, coverage=0.5)
    assert looser.threshold == 20 and looser.quantile < back.quantile
    assert back.unknown_rate == 0.05  # the run's own setting is unchanged
    with pytest.raises(InputError, match=r"--coverage 1.5: a coverage is a fraction"):
        back.with_settings(coverage=1.5)
    (tmp_path / "trust.json").write_text("{")
    with pytest.raises(InputError, match=r"trust.json' is not a valid trust record"):
        load_trust(tmp_path)


# ------------------------------------------------------------ through the CLI


@pytest.fixture(scope="module")
def trust_run(tmp_path_factory):
    """Three colour classes, 40 training images each (24 held out for validation:
    enough for the 0.05 rate and 0.9 coverage), 8 test images each; and a folder of
    images of two other colours, the unknown ones."""
    from transferkit.estimator import TransferClassifier

    root = tmp_path_factory.mktemp("trust")
    data = make_image_folder(root / "data", per_class=40, layout="splits", test_per_class=8)
    other = make_image_folder(root / "other", classes=("a", "b", "c", "yellow", "cyan"))
    for name in ("a", "b", "c"):
        shutil.rmtree(other / name)
    clf = TransferClassifier(
        "test_resnet", "feature-extract", weights="none", cache_dir=str(root / "cache"), **FAST_FIT
    )
    clf.fit(data, run_dir=root / "run")
    return root / "run", data, other


def _predict_json(capsys, *args):
    assert main(["predict", *map(str, args), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_fit_records_the_thresholds_and_metrics_json_the_sets_coverage(trust_run):
    run, _, _ = trust_run
    m = json.loads((run / "metrics.json").read_text())
    assert m["ood_method"] == "mahalanobis" and m["trust_source"] == "validation"
    assert m["unknown_rate"] == 0.05 and m["coverage_target"] == 0.9
    assert m["trust_images"] == 24 and m["ood_threshold"] > 0
    assert 0 < m["conformal_quantile"] < 1
    assert 0 <= m["coverage"] <= 1 and 1 <= m["mean_set_size"] <= 3
    assert (run / "trust.json").is_file() and (run / "trust.safetensors").is_file()


def test_predict_json_gives_every_trust_field(trust_run, capsys):
    run, data, _ = trust_run
    doc = _predict_json(capsys, run, data / "test")
    assert doc["trust"]["ood_method"] == "mahalanobis" and doc["notes"] == []
    for p in doc["predictions"]:
        assert p["label"] == p["prediction"] == p["top_k"][0]["class"]
        assert p["confidence"] == p["top_k"][0]["probability"]
        assert isinstance(p["unknown"], bool) and isinstance(p["ood_score"], float)
        assert p["prediction_set"][0] == p["label"]
        assert p["unknown"] == (p["ood_score"] > doc["trust"]["ood_threshold"])


def test_predict_csv_and_table_show_the_trust_fields(trust_run, capsys):
    run, data, _ = trust_run
    assert (
        main(["predict", str(run), str(data / "test"), "--format", "csv", "--coverage", "0.99"])
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 24
    for r in rows:
        assert r["unknown"] in ("true", "false") and float(r["ood_score"]) > 0
        assert r["prediction_set"].split("|")[0] == r["label"] == r["prediction"]
    assert main(["predict", str(run), str(data / "test"), "--coverage", "0.99"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:6] == [
        "path", "prediction", "confidence", "unknown", "ood_score", "prediction_set"
    ]  # fmt: skip
    assert " or " in out  # a set of more than one class, written readably


def test_predict_unknown_rate_and_coverage_override_the_runs_without_a_refit(trust_run, capsys):
    run, data, other = trust_run
    images = [data / "test", other]
    default = _predict_json(capsys, run, *images)
    loose = _predict_json(capsys, run, *images, "--unknown-rate", "0.5", "--coverage", "0.5")
    assert loose["trust"]["unknown_rate"] == 0.5 and loose["trust"]["coverage"] == 0.5
    assert loose["trust"]["ood_threshold"] < default["trust"]["ood_threshold"]
    count = lambda doc: sum(p["unknown"] for p in doc["predictions"])  # noqa: E731
    size = lambda doc: sum(len(p["prediction_set"]) for p in doc["predictions"])  # noqa: E731
    assert count(loose) > count(default) and size(loose) <= size(default)
    assert json.loads((run / "trust.json").read_text())["unknown_rate"] == 0.05


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--unknown-rate", "1.5", "--unknown-rate 1.5: the share"),
        ("--coverage", "0", "--coverage 0.0"),
    ],
)
def test_a_bad_trust_setting_is_one_line_naming_it(trust_run, capsys, flag, value, message):
    run, data, _ = trust_run
    assert main(["predict", str(run), str(data / "test"), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"transferkit: error: {message}") and len(err.splitlines()) == 1


def test_evaluate_json_gives_calibration_sets_and_the_ood_auroc(trust_run, capsys):
    run, data, other = trust_run
    assert main(["evaluate", str(run), str(data), "--ood", str(other), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("ece", "ece_uncalibrated", "coverage", "mean_set_size", "unknown_share"):
        assert doc[key] is not None, key
    assert doc["coverage_target"] == 0.9 and doc["ood_images"] == 16
    assert doc["ood_auroc"] > 0.9  # other colours than the training ones
    assert doc["ood_unknown_share"] > doc["unknown_share"]
    assert main(["evaluate", str(run), str(data), "--ood", str(other)]) == 0
    assert "--ood images: AUROC" in capsys.readouterr().out


def test_evaluate_ood_without_images_is_one_line(trust_run, tmp_path, capsys):
    run, data, _ = trust_run
    assert main(["evaluate", str(run), str(data), "--ood", str(tmp_path), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"transferkit: error: --ood {str(tmp_path)!r}: no image files")


def test_a_run_from_before_trust_data_predicts_with_null_fields_and_a_note(
    trust_run, tmp_path, capsys
):
    run, data, other = trust_run
    old = shutil.copytree(run, tmp_path / "old")
    (old / "trust.json").unlink()
    (old / "trust.safetensors").unlink()
    doc = _predict_json(capsys, old, data / "test")
    p = doc["predictions"][0]
    assert p["unknown"] is None and p["ood_score"] is None and p["prediction_set"] is None
    assert "fitted before transferkit recorded" in doc["notes"][0]
    assert main(["evaluate", str(old), str(data), "--ood", str(other), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["coverage"] is None and ev["ood_auroc"] is None and ev["trust_notes"]
    assert main(["predict", str(old), str(data / "test"), "--coverage", "0.8"]) == 2
    assert "has no held-out scores" in capsys.readouterr().err


def test_onnx_gives_the_runs_prediction_sets_and_says_why_no_ood_score(trust_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run, data, _ = trust_run
    model = tmp_path / "m.onnx"
    assert main(["export", str(run), "--out", str(model)]) == 0
    capsys.readouterr()
    by_run = _predict_json(capsys, run, data / "test")["predictions"]
    doc = _predict_json(capsys, model, data / "test")
    for a, b in zip(by_run, doc["predictions"], strict=True):
        assert abs(a["confidence"] - b["confidence"]) <= 1e-4
        assert a["prediction_set"] == b["prediction_set"]
        assert b["ood_score"] is None and b["unknown"] is None
    assert "an exported model does not give" in doc["notes"][0]


def test_unknown_rate_and_coverage_are_run_settings(tmp_path):
    from transferkit.cli import build_parser, fit_config_from_args
    from transferkit.config import FitConfig

    config = tmp_path / "fit.json"
    config.write_text(json.dumps({"unknown_rate": 0.1, "coverage": 0.8}))
    args = build_parser().parse_args(["fit", "d", "--out", "o", "--config", str(config)])
    cfg = fit_config_from_args(args)
    assert (cfg.unknown_rate, cfg.coverage) == (0.1, 0.8)
    with pytest.raises(InputError, match="--coverage 2"):
        FitConfig(coverage=2).validate()
    with pytest.raises(InputError, match=r"--unknown-rate -0\.1"):
        FitConfig(unknown_rate=-0.1).validate()


def test_small_data_takes_out_of_fold_scores(tmp_path, data):
    """The cross-validated head trains on the validation images: the OOD threshold's
    held-out scores are out-of-fold instead."""
    from transferkit.estimator import TransferClassifier

    clf = TransferClassifier(
        "test_resnet", "feature-extract", weights="none", cache_dir=str(tmp_path / "c"), **FAST_FIT
    )
    clf.fit(data, run_dir=tmp_path / "run")
    assert clf.metrics_["selection"]["validation_pooled"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["trust_source"] == "out-of-fold"
    state = load_trust(tmp_path / "run")
    pooled = clf.metrics_["n_train"] + clf.metrics_["n_val"]
    # both thresholds from every pooled image, not only the validation part
    assert len(state.ood_held_out) == len(state.conformal_held_out) == pooled
    from transferkit.reports.run_report import run_trust_section

    assert "Only roughly here: the held-out scores are the cross-validation" in (
        run_trust_section(tmp_path / "run")
    )


# ------------------------------------------------------------------- report


def test_the_trust_section_shows_reliability_coverage_and_uncertain_images(trust_run, tmp_path):
    from transferkit.reports.run_report import run_trust_section

    run, _, _ = trust_run
    html = run_trust_section(run)
    assert html.count("<img") >= 2 + 1  # reliability, coverage curve, thumbnails
    assert 'alt="reliability diagram before and after calibration"' in html
    assert 'alt="coverage against set size"' in html
    assert "least sure of" in html and 'class="thumb"' in html
    assert "mahalanobis OOD score" in html and "24 validation images" in html
    old = shutil.copytree(run, tmp_path / "old")
    (old / "trust.json").unlink()
    html = run_trust_section(old)
    assert "fitted before transferkit recorded" in html and "coverage against" not in html


def test_the_trust_section_is_a_pure_function_of_the_stored_data():
    from PIL import Image

    from transferkit.reports.trust_section import coverage_curve, trust_section, uncertain_rows

    rng = np.random.default_rng(4)
    probs, labels = _exchangeable(rng, 200, k=3)
    held_out = list(nonconformity(*_exchangeable(rng, 100, k=3)))
    trust = TrustState(ood_held_out=list(range(30)), conformal_held_out=held_out).to_json()
    curve = coverage_curve(held_out, probs, labels)
    assert [c["target"] for c in curve][:1] == [0.5]
    sizes = [c["mean_set_size"] for c in curve]
    assert sizes == sorted(sizes)  # more coverage costs larger sets
    rows = [
        {"split": "val", "path": f"{i}.png", "label": "abc"[y], "probs": list(p)}
        for i, (p, y) in enumerate(zip(probs, labels, strict=True))
    ]
    uncertain = uncertain_rows(rows, ["a", "b", "c"], 0.9, limit=3)
    assert len(uncertain) == 3 and len(uncertain[0]["set"]) >= len(uncertain[-1]["set"])
    uncertain[0]["image"] = Image.new("RGB", (8, 8))
    html = trust_section(trust, probs, labels, 1.5, uncertain, "test")
    assert "<b>a or b" in html or " or " in html
    assert "image unavailable" in html  # the others had no image
    assert "at least 90% of sets" in html


# ------------------------------------------------------------ test-time augmentation


class _Columns(torch.nn.Module):
    """Features that see where things are: flipping the image changes them."""

    def forward_features(self, x):
        return x[:, :, 0, :]  # (B, C, W): the first row, left to right, per channel


def test_tta_averages_the_logits_of_the_image_and_its_mirror_image():
    from transferkit.heads import ClassifierHead, TransferModel

    torch.manual_seed(0)
    head = ClassifierHead(4, 3)
    head.layers[0] = torch.nn.Flatten()  # the row as it is, order kept
    model = TransferModel(_Columns(), head).eval()
    x = torch.randn(2, 1, 2, 4)
    plain, mirrored = model(x), model(torch.flip(x, dims=(3,)))
    assert not torch.allclose(plain, mirrored)
    model.set_tta(True)
    assert torch.allclose(model(x), (plain + mirrored) / 2)
    state = model.state_dict()
    assert float(state["tta"]) == 1.0
    fresh = TransferModel(_Columns(), head)
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.eval()(x), (plain + mirrored) / 2)
    del state["tta"]  # weights saved before test-time augmentation existed
    fresh.load_state_dict(state)
    assert torch.allclose(fresh(x), plain)


def test_tta_is_kept_only_if_it_improves_validation():
    from transferkit.heads import ClassifierHead
    from transferkit.trust.tta import tta_decision

    head = ClassifierHead(4, 3)
    labels = np.array([0, 1, 2, 0])
    good = np.eye(3)[labels] * 4.0
    bad = np.roll(good, 1, axis=1)
    helps = tta_decision(head, good * 0.5, good, labels)  # the mirror view is surer
    assert helps["kept"] and helps["val_log_loss"]["with"] < helps["val_log_loss"]["without"]
    hurts = tta_decision(head, good, bad, labels)
    assert not hurts["kept"]
    assert hurts["val_accuracy"]["with"] < hurts["val_accuracy"]["without"] == 1.0


def test_fit_with_tta_records_both_numbers_and_its_decision(trust_run, tmp_path):
    from transferkit.estimator import TransferClassifier

    _, data, _ = trust_run
    clf = TransferClassifier(
        "test_resnet", "feature-extract", weights="none", tta=True,
        cache_dir=str(tmp_path / "cache"), **FAST_FIT,
    )  # fmt: skip
    clf.fit(data, run_dir=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["tta"]
    assert record["method"] == "hflip" and record["images"] == 24
    assert set(record["val_log_loss"]) == set(record["val_accuracy"]) == {"without", "with"}
    kept = record["val_log_loss"]["with"] < record["val_log_loss"]["without"]
    kept = kept and record["val_accuracy"]["with"] >= record["val_accuracy"]["without"]
    assert record["kept"] == kept == bool(clf.model_.tta)


def test_a_run_with_tta_predicts_the_mirror_average_and_onnx_agrees(trust_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from transferkit.estimator import TransferClassifier
    from transferkit.predict import load_predictor

    run, data, _ = trust_run
    images = sorted(str(p) for p in (data / "test").rglob("*.png"))
    plain = load_predictor(run)
    clf = TransferClassifier.load(run)
    clf.model_.set_tta(True)
    clf.save(tmp_path / "tta")
    shutil.copy(run / "trust.json", tmp_path / "tta")
    shutil.copy(run / "trust.safetensors", tmp_path / "tta")
    with_tta = load_predictor(tmp_path / "tta")
    pixels = np.stack([plain._pixels(plain_image(p, plain)) for p in images])
    mirrored = pixels[..., ::-1].copy()
    expected = plain.probabilities((plain.logits_fn(pixels) + plain.logits_fn(mirrored)) / 2)
    _, got, _ = with_tta.predict_proba_files(images)
    assert np.abs(got - expected).max() <= 1e-5
    assert main(["export", str(tmp_path / "tta"), "--out", str(tmp_path / "m.onnx")]) == 0
    _, onnx, _ = load_predictor(tmp_path / "m.onnx").predict_proba_files(images)
    assert np.abs(onnx - got).max() <= 1e-4


def plain_image(path, predictor):
    from transferkit.data import open_image

    return open_image(path, channels=predictor.channels, side=predictor.side)


def test_wide_features_get_a_per_dimension_variance_not_a_huge_matrix(monkeypatch):
    from transferkit.trust import ood

    monkeypatch.setattr(ood, "MAX_FULL_COVARIANCE", 8)
    rng = np.random.default_rng(5)
    x, y = _clusters(rng, d=16)
    stats = fit_feature_stats(x, y, 3)
    assert set(stats) == {"means", "variances"} and stats["variances"].shape == (16,)
    known = ood_scores("mahalanobis", None, x[::3] + rng.normal(0, 0.1, x[::3].shape), stats)
    assert auroc(known, ood_scores("mahalanobis", None, rng.normal(0, 1, (40, 16)), stats)) > 0.99
