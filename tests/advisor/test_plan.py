"""The advisor plans before anything trains: measured decisions by size x similarity,
the cut measured for feature extraction, decisions remembered for the same data."""

from __future__ import annotations

import pytest

from helpers import make_image_folder
from transferkit.advisor import SMALL_PER_CLASS, AdviceStore, decide, make_plan
from transferkit.backbones import create_backbone
from transferkit.config import FitConfig
from transferkit.data import load_data
from transferkit.estimator import TransferClassifier

FAST = {
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "head_epochs": 20,
    "patience": 3,
    "fine_tune_epochs": 1,
    "batch_size": 16,
    "workers": 0,
}


@pytest.fixture(scope="module")
def larger_data(tmp_path_factory):
    return make_image_folder(
        tmp_path_factory.mktemp("forty"), per_class=40, size=16, layout="splits", test_per_class=6
    )


def test_small_data_plan_is_feature_extraction_with_its_reason(tiny_data):
    splits = load_data(tiny_data)
    plan, measured = make_plan(
        create_backbone("test_resnet", weights="none"), splits, FitConfig(seed=0)
    )
    assert plan.strategy == "feature-extract" and plan.decision is not None
    assert plan.decision.size["small"] and plan.decision.size["per_class_median"] < SMALL_PER_CLASS
    assert "is small" in plan.reason and plan.image_size == 64  # 16 px images
    assert set(measured.features) == {"conv1", "layer1", "layer2", "layer3", "layer4"}


def test_enough_data_is_planned_to_fine_tune(larger_data):
    splits = load_data(larger_data, seed=0)
    d = decide(create_backbone("test_resnet", weights="none"), splits, image_size=16)
    assert d.strategy == "fine-tune" and d.unfreeze in ("all", "top:2")
    assert d.size["small"] is False


def test_an_explicit_strategy_and_cut_are_planned_as_asked_without_measuring(tiny_data):
    bb = create_backbone("test_resnet", weights="none", cut="layer2")
    plan, measured = make_plan(
        bb, load_data(tiny_data), FitConfig(strategy="fine-tune", cut="layer2", image_size=32)
    )
    assert (plan.strategy, plan.cut, plan.image_size, plan.decision, measured) == (
        "fine-tune",
        "layer2",
        32,
        None,
        None,
    )


def test_plan_leaves_backbone_and_config_as_they_were(tiny_data):
    bb = create_backbone("test_resnet", weights="none")
    config = FitConfig(strategy="auto")
    before = (bb.cut, config.to_dict())
    plan, _ = make_plan(bb, load_data(tiny_data), config)
    assert (bb.cut, config.to_dict()) == before
    assert plan.resolve(config).strategy == plan.strategy != "auto"


def test_a_remembered_decision_is_reused_and_a_damaged_one_ignored(tiny_data, tmp_path):
    splits = load_data(tiny_data)
    bb = create_backbone("test_resnet", weights="none")
    advice = AdviceStore(tmp_path / "advice")
    first, m1 = make_plan(bb, splits, FitConfig(), advice=advice)
    again, m2 = make_plan(bb, splits, FitConfig(), advice=advice)
    assert m1 is not None and m2 is None  # nothing measured the second time
    assert again.decision.to_dict() == first.decision.to_dict()
    (stored,) = (tmp_path / "advice").glob("*.json")
    stored.write_text("{not json")
    _, m3 = make_plan(bb, splits, FitConfig(), advice=advice)
    assert m3 is not None  # measured again, not trusted


def test_fit_auto_records_decision_and_reuses_the_measuring_pass(larger_data, tmp_path):
    import json

    clf = TransferClassifier(
        "test_resnet", weights="none", cache_dir=str(tmp_path / "c"), image_size=16, **FAST
    )
    clf.fit(larger_data, run_dir=tmp_path / "run")
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["requested_strategy"] == "auto"
    assert m["strategy"] == m["decision"]["strategy"]
    assert m["decision"]["reason"]
    # the advisor's pass seeded the cache: the backbone did not run over train again
    assert m["feature_cache"]["hits"] == m["n_train"]
    assert m["feature_cache"]["extracted"] <= m["n_val"] + m["n_test"]


@pytest.mark.parametrize("selection", ["holdout", "auto"])
def test_feature_extract_without_cut_measures_the_cut(tiny_data, tmp_path, selection):
    """By the probe's best cut; on small data (unless ``holdout``) by the candidate
    features' cross-validated heads, the table of them in metrics.json."""
    clf = TransferClassifier(
        "test_resnet",
        "feature-extract",
        weights="none",
        image_size=16,
        cache_dir=str(tmp_path / "c"),
        **{**FAST, "selection": selection},
    ).fit(tiny_data)
    d = clf.metrics_["decision"]
    assert clf.metrics_["cut"] == d["cut"]
    if selection == "holdout":
        assert d["cut"] == d["best_cut"] and "the cut is measured" in d["reason"]
        assert d["candidates"] == []
        return
    best = max(r["cv_accuracy"] for r in d["candidates"])
    kept = next(r for r in d["candidates"] if r["cut"] == d["cut"])
    assert kept["cv_accuracy"] == best and "compared by cross-validation" in d["reason"]
    assert any("+" in r["cut"] for r in d["candidates"])  # joined cuts were candidates


def test_second_auto_fit_runs_the_backbone_zero_times(tiny_data, tmp_path, monkeypatch):
    import transferkit.advisor.plan as plan

    params = {"weights": "none", "image_size": 16, "cache_dir": str(tmp_path / "c"), **FAST}
    first = TransferClassifier("test_resnet", **params).fit(tiny_data)

    def no_measuring(*args, **kwargs):
        raise AssertionError("the backbone ran to measure again")

    monkeypatch.setattr(plan, "measure_splits", no_measuring)
    second = TransferClassifier("test_resnet", **params).fit(tiny_data)
    assert second.metrics_["feature_cache"]["extracted"] == 0
    assert second.metrics_["decision"] == first.metrics_["decision"] | {
        "seconds": second.metrics_["decision"]["seconds"]
    }
    assert second.metrics_["val_accuracy"] == first.metrics_["val_accuracy"]


def test_a_decision_that_cannot_be_written_is_measured_again_not_a_failure(
    tiny_data, tmp_path, monkeypatch
):
    """The advice store is a cache: a full or read-only folder costs a measurement."""
    import errno

    import transferkit.advisor.memory as memory

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(memory, "atomic_write_text", full)
    splits = load_data(tiny_data)
    bb = create_backbone("test_resnet", weights="none")
    advice = AdviceStore(tmp_path / "advice")
    plan, measured = make_plan(bb, splits, FitConfig(), advice=advice)
    assert measured is not None and plan.decision is not None
    _, again = make_plan(bb, splits, FitConfig(), advice=advice)
    assert again is not None  # nothing was remembered, nothing broke


def _small_decision(cut="top", small=True, **probe):
    from transferkit.advisor.decide import Decision

    scores = {c: {"linear_probe_accuracy": v} for c, v in probe.items()}
    return Decision(
        "feature-extract", cut, None, 32, "small.", size={"small": small}, scores=scores
    )


def _measured(**features):
    from types import SimpleNamespace

    import numpy as np

    y = np.repeat(np.arange(3), 8)
    return SimpleNamespace(
        examples=[SimpleNamespace(label=int(v)) for v in y],
        features={k: f(y).astype("float32") for k, f in features.items()},
    )


def test_on_small_data_the_cut_is_chosen_by_the_cross_validated_head_too():
    """Among the probe's best cuts, the one whose cross-validated head (penalty
    chosen too) does best is kept, the reason says so, and every candidate is in the
    decision's table."""
    from types import SimpleNamespace

    import numpy as np

    from transferkit.advisor.plan import compare_features_by_cv

    rng = np.random.default_rng(0)
    m = _measured(
        low=lambda y: rng.normal(size=(len(y), 8)) + np.eye(3, 8)[y] * 4,
        top=lambda y: rng.normal(size=(len(y), 8)),
    )
    decision = _small_decision(top=0.9, low=0.8)
    splits = SimpleNamespace(classes=["a", "b", "c"])
    refined = compare_features_by_cv(m, decision, splits, seed=0)
    assert refined.cut == "low" and "low did best" in refined.reason
    assert [r["cut"] for r in refined.candidates] == ["top", "low"]
    assert all(0 <= r["cv_accuracy"] <= 1 and r["features"] == 8 for r in refined.candidates)
    large = _small_decision(small=False, top=0.9, low=0.8)
    assert compare_features_by_cv(m, large, splits, seed=0) is large


def test_two_cuts_that_each_see_half_the_classes_are_joined():
    """Layer a separates class 0 from the rest, layer b class 1: alone each is
    weak, side by side they separate all three, and the joined cut is kept."""
    from types import SimpleNamespace

    import numpy as np

    from transferkit.advisor.plan import compare_features_by_cv

    rng = np.random.default_rng(1)
    m = _measured(
        a=lambda y: rng.normal(size=(len(y), 4)) * 0.3 + (y == 0)[:, None] * 3,
        b=lambda y: rng.normal(size=(len(y), 4)) * 0.3 + (y == 1)[:, None] * 3,
    )
    decision = _small_decision("b", a=0.6, b=0.6)
    refined = compare_features_by_cv(
        m, decision, SimpleNamespace(classes=["x", "y", "z"]), seed=0, joinable=True
    )
    table = {r["cut"]: r for r in refined.candidates}
    assert list(table) == ["b", "a", "a+b"]  # the decision's own, the probe's, joined
    assert refined.cut == "a+b" and table["a+b"]["features"] == 8
    assert table["a+b"]["cv_accuracy"] > max(table["a"]["cv_accuracy"], table["b"]["cv_accuracy"])


def test_candidates_past_the_time_budget_are_listed_as_not_compared(monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from transferkit.advisor import plan

    monkeypatch.setattr(plan, "COMPARISON_BUDGET_S", 0.0)
    rng = np.random.default_rng(2)
    m = _measured(
        a=lambda y: rng.normal(size=(len(y), 4)), b=lambda y: rng.normal(size=(len(y), 4))
    )
    refined = plan.compare_features_by_cv(
        m, _small_decision("b", a=0.6, b=0.7), SimpleNamespace(classes=list("xyz")), 0
    )
    first, *rest = refined.candidates
    assert first["cut"] == "b" and "cv_accuracy" in first and refined.cut == "b"
    assert rest and all(r["skipped"].startswith("not compared") for r in rest)


def test_candidates_that_tie_in_accuracy_keep_the_probes_cut():
    """Every candidate separates these classes perfectly; log-loss alone would pick
    the candidate with the most features, not the cut the probe chose."""
    from types import SimpleNamespace

    import numpy as np

    from transferkit.advisor.plan import compare_features_by_cv

    rng = np.random.default_rng(3)
    m = _measured(
        low=lambda y: rng.normal(size=(len(y), 6)) * 0.1 + np.eye(3, 6)[y] * 9,
        top=lambda y: rng.normal(size=(len(y), 6)) * 0.1 + np.eye(3, 6)[y] * 3,
    )
    refined = compare_features_by_cv(
        m,
        _small_decision("top", top=1.0, low=1.0),
        SimpleNamespace(classes=list("xyz")),
        0,
        joinable=True,
    )
    table = {r["cut"]: r for r in refined.candidates}
    assert {r["cv_accuracy"] for r in table.values()} == {1.0}
    assert min(table, key=lambda c: table[c]["cv_log_loss"]) != "top"  # would have won
    assert refined.cut == "top" and "top stays best" in refined.reason
