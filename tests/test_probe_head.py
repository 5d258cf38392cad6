"""The head on small data: logistic regression fitted to convergence like
scikit-learn's, its penalty chosen by cross-validation, the standardisation folded
into a plain linear head; every label used, and the validation reported honestly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import FAST_FIT, TinyNet, make_image_folder
from transferkit import probe_head
from transferkit.config import FitConfig
from transferkit.fitting import fit
from transferkit.heads import ClassifierHead


def _blobs(n_per_class=12, classes=3, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    centres = torch.randn(classes, d, generator=g) * 2
    x = centres[y] + torch.randn(len(y), d, generator=g) * 3 + 5  # off-centre, wide
    x[:, 0] *= 100  # features on very different scales: standardisation matters
    return x, y


def test_logistic_regression_matches_scikit_learns_solution():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _blobs()
    ours = probe_head.fit_logistic(x, y, 3, c=0.5)
    theirs = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=5000))
    theirs.fit(x.numpy(), y.numpy())
    p_ours = ours.logits(x).softmax(1).numpy()
    p_theirs = theirs.predict_proba(x.numpy())
    assert np.abs(p_ours - p_theirs).max() < 1e-4


@pytest.mark.parametrize("classes", [2, 4])
def test_the_fitted_model_goes_into_a_plain_linear_head_standardisation_included(classes):
    x, y = _blobs(classes=classes)
    model = probe_head.fit_logistic(x, y, classes, c=1.0)
    head = ClassifierHead(x.shape[1], classes).eval()
    probe_head.load_into(head, model)
    with torch.no_grad():
        ours = head.probabilities(head(x))
    assert torch.allclose(ours, model.logits(x).softmax(1).float(), atol=1e-5)


def test_selection_cross_validates_every_candidate_and_keeps_out_of_fold_probabilities():
    x, y = _blobs(n_per_class=4)
    chosen = probe_head.select(x, y, 3, seed=0)
    assert chosen.folds == 4  # the smallest class allows 4
    names = [c.name for c in chosen.candidates]
    assert probe_head.NCM in names and len(names) == len(probe_head.C_GRID) + 1
    assert all(0 <= c.accuracy <= 1 for c in chosen.candidates)
    best = max(c.accuracy for c in chosen.candidates)
    assert chosen.chosen.accuracy == best
    oof = chosen.oof_probabilities
    assert oof.shape == (12, 3) and torch.allclose(oof.sum(1), torch.ones(12), atol=1e-5)
    assert float((oof.argmax(1) == y).float().mean()) == pytest.approx(chosen.chosen.accuracy)
    again = probe_head.select(x, y, 3, seed=0)
    assert again.to_dict() == chosen.to_dict()  # seeded folds


def test_a_class_of_one_image_gets_the_default_penalty_without_cross_validation():
    x, y = _blobs(n_per_class=1)
    chosen = probe_head.select(x, y, 3)
    assert chosen.folds == 0 and chosen.chosen.c == 1.0 and chosen.oof_probabilities is None


def test_no_view_of_a_held_out_image_is_trained_on():
    """Views that are exact copies of pure-noise images: a fold that trained on the
    copy of an image it scores would get it right (the penalty is weak enough to
    memorise); kept apart, the views add nothing and the score stays near chance."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 200, generator=g)
    y = torch.arange(3).repeat(20)
    chosen = probe_head.select(x, y, 3, seed=0, views=x[None].clone())
    viewed = [c for c in chosen.candidates if c.views]
    assert len(viewed) == len(chosen.candidates) // 2 and viewed[0].name.endswith("views")
    assert max(c.accuracy for c in viewed) < 0.6


def test_views_that_carry_information_are_chosen_and_refitted_with():
    """Each view a fresh noisy sample of the image's class: more to learn from, so a
    candidate with views wins, and the refit uses them."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 30, generator=g)
    y = torch.arange(3).repeat(4)
    x = centres[y] + torch.randn(len(y), 30, generator=g) * 2
    views = centres[y][None] + torch.randn(6, len(y), 30, generator=g) * 2
    chosen = probe_head.select(x, y, 3, seed=0, views=views)
    plain = max(c.accuracy for c in chosen.candidates if not c.views)
    assert chosen.chosen.views and chosen.chosen.accuracy > plain
    model = probe_head.fit_candidate(chosen.chosen, x, y, 3, views=views)
    same_penalty = probe_head.Candidate("no views", chosen.chosen.c)
    alone = probe_head.fit_candidate(same_penalty, x, y, 3)
    assert not torch.allclose(model.weight, alone.weight)


def _fit(tmp_path, data, run=None, **settings):
    params = {**FAST_FIT, "cache_dir": str(tmp_path / "cache"), "cut": "blocks.2"}
    config = FitConfig(**{**params, "strategy": "feature-extract", **settings})
    torch.manual_seed(0)
    return fit(data, config, module=TinyNet(), run_dir=run)


def test_small_data_pool_train_and_validation_and_report_the_selection(tmp_path, data):
    fitted = _fit(tmp_path, data, tmp_path / "run")
    (phase,) = fitted.result.phases
    assert "chosen by cross-validation" in phase.stopped and phase.converged
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    selection = metrics["selection"]
    assert selection["folds"] == 5  # 6 images per class, validation pooled
    names = [c["candidate"] for c in selection["candidates"]]
    assert selection["chosen"] in names
    assert sum(name.endswith(" + flipped views") for name in names) == len(names) // 2
    assert "training and validation" in (tmp_path / "run" / "train.log").read_text()
    # the validation images were trained on: their scores are the out-of-fold ones
    val = fitted.result.evaluations["val"]
    assert val.probabilities.shape == (len(val.labels), 3)
    assert metrics["val_accuracy"] == pytest.approx(val.accuracy)
    assert len(fitted.result.history) == 1  # one fit, not epochs
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Model selection" in page and f"{selection['chosen']} (kept)" in page
    assert "5-fold stratified cross-validation on the 18 training and validation" in page
    assert "One step, no epochs." in page and "Overfitting check." not in page


def test_holdout_selection_keeps_the_epoch_trained_head(tmp_path, data):
    fitted = _fit(tmp_path, data, selection="holdout")
    assert fitted.result.phases[0].epochs_run > 1 and "selection" not in fitted.metrics


def test_a_validation_folder_of_the_users_own_stays_held_out(tmp_path):
    flat = make_image_folder(tmp_path / "flat", per_class=6, size=16)
    root = tmp_path / "data"
    for name in ("red", "green", "blue"):
        files = sorted((flat / name).iterdir())
        for split, part in (("val", files[:2]), ("train", files[2:])):
            (root / split / name).mkdir(parents=True)
            for f in part:
                shutil.copy(f, root / split / name / f.name)
    fitted = _fit(tmp_path, root)
    assert fitted.metrics["selection"]["folds"] == 4  # the 4 training images per class
    val = fitted.result.evaluations["val"]
    assert len(val.labels) == 6 and fitted.metrics["n_val"] == 6
    assert val.probabilities.shape == (6, 3)
