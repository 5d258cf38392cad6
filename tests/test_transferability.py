"""Transferability scores (issue 5): LogME, probes, pooled features per cut, BN similarity."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from helpers import TinyNet
from transferkit import InputError, create_backbone
from transferkit.transferability import (
    BNSimilarity,
    bn_layers_by_cut,
    bn_similarity,
    gaussian_overlap,
    knn_accuracy,
    linear_probe_accuracy,
    logme,
    measure_per_cut,
    pooled_features_per_cut,
    score_features,
    score_per_cut,
)

# ---------------------------------------------------------------------------- data


def blobs(
    n_per_class: int = 50, n_classes: int = 4, dim: int = 8, spread: float = 6.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs whose centres point in different directions, so
    cosine and linear classifiers both separate them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    centres *= spread / np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(size=(len(y), dim)), y


def log_evidence_direct(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha): the Bayesian linear model's evidence written
    as the marginal Gaussian, independently of the SVD route under test."""
    n = len(y)
    cov = np.eye(n) / math.exp(log_beta) + f @ f.T / math.exp(log_alpha)
    chol = np.linalg.cholesky(cov)
    w = np.linalg.solve(chol, y)
    return -0.5 * (w @ w) - np.log(np.diag(chol)).sum() - n / 2 * math.log(2 * math.pi)


def logme_direct(f: np.ndarray, labels: np.ndarray) -> float:
    """LogME by brute force: scipy maximises each class's evidence over log alpha, log beta."""
    per_class = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        result = minimize(
            lambda p, y=y: -log_evidence_direct(f, y, *p),
            x0=[0.0, 0.0],
            method="Nelder-Mead",
            options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
        )
        assert result.success, result.message
        per_class.append(-result.fun / len(y))
    return float(np.mean(per_class))


# ---------------------------------------------------------------------------- LogME


@pytest.mark.parametrize(
    "n, d, noise, degenerate",
    [
        (60, 5, 1.0, False),
        (40, 12, 0.5, False),
        (25, 3, 3.0, False),
        (40, 6, 1.0, True),  # rank-deficient: repeated and all-zero feature columns
        (20, 30, 1.0, False),
        (12, 40, 0.5, False),
    ],  # more features than examples
)
def test_logme_matches_direct_evidence_maximisation(n, d, noise, degenerate):
    rng = np.random.default_rng(n + d)
    f = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)  # unequal feature scales
    if degenerate:
        f = np.hstack([f, 2 * f[:, :3], np.zeros((n, 2))])
    labels = np.argmax(
        f @ rng.normal(size=(f.shape[1], 3)) + noise * rng.normal(size=(n, 3)), axis=1
    )
    expected = logme_direct(f, labels)
    assert logme(f, labels) == pytest.approx(expected, rel=1e-4)


def test_logme_prefers_separable_labels_to_shuffled_ones():
    x, y = blobs()
    shuffled = np.random.default_rng(1).permutation(y)
    assert logme(x, y) > logme(x, shuffled) + 0.1


def test_logme_is_finite_with_more_features_than_examples():
    # N <= D lets the model fit every target exactly: the fixed point runs off to
    # alpha or beta = infinity while the evidence converges; it must stay finite.
    rng = np.random.default_rng(0)
    value = logme(rng.normal(size=(15, 30)), rng.integers(0, 3, 15))
    assert math.isfinite(value)


def test_logme_of_all_zero_features_is_the_noise_only_model():
    # No weights can help, so y ~ N(0, I/beta) with beta = N/|y|^2 (here 2 for 0/1
    # targets split in halves): dead channels at a low cut must not give NaN.
    y = np.repeat([0, 1], 10)
    expected = 0.5 * math.log(2) - 0.5 * math.log(2 * math.pi) - 0.5
    assert logme(np.zeros((20, 3)), y) == pytest.approx(expected, rel=1e-9)


def test_logme_accepts_any_label_type():
    x, y = blobs(n_per_class=10, n_classes=3)
    names = np.array(["cat", "dog", "eel"])[y]
    assert logme(x, names) == pytest.approx(logme(x, y))


@pytest.mark.parametrize(
    "features, labels, message",
    [
        (np.zeros(10), np.zeros(10), "(N, D)"),
        (np.zeros((10, 2)), np.zeros(9), "one label per row"),
        (np.zeros((10, 2)), np.zeros(10), "at least 2 classes"),
        (np.full((4, 2), np.nan), np.array([0, 0, 1, 1]), "NaN"),
    ],
)
def test_bad_inputs_raise_input_error(features, labels, message):
    with pytest.raises(InputError, match=message):
        logme(features, labels)


# ---------------------------------------------------------------------------- probes


def test_probes_separate_blobs_and_fall_to_chance_on_shuffled_labels():
    x, y = blobs(n_per_class=50, n_classes=4)
    assert knn_accuracy(x, y) >= 0.97
    assert linear_probe_accuracy(x, y) >= 0.97
    shuffled = np.random.default_rng(1).permutation(y)
    assert knn_accuracy(x, shuffled) < 0.45  # chance is 0.25
    assert linear_probe_accuracy(x, shuffled) < 0.45


def test_knn_is_cosine_so_feature_norm_does_not_matter():
    x, y = blobs(n_per_class=20, n_classes=3)
    scale = np.random.default_rng(2).uniform(0.1, 10.0, size=(len(y), 1))
    assert knn_accuracy(x * scale, y) == knn_accuracy(x, y)


def test_cross_validation_uses_fewer_folds_for_a_small_class():
    x, y = blobs(n_per_class=10, n_classes=2)
    x, y = x[:12], y[:12]  # 10 of class 0, 2 of class 1: two folds at most
    assert 0.0 <= knn_accuracy(x, y, folds=5) <= 1.0
    assert 0.0 <= linear_probe_accuracy(x, y, folds=5) <= 1.0
    with pytest.raises(InputError, match="at least 2 examples of every class"):
        knn_accuracy(x[:11], y[:11])


def test_probe_arguments_are_checked():
    x, y = blobs(n_per_class=10, n_classes=2)
    with pytest.raises(InputError, match="folds"):
        knn_accuracy(x, y, folds=1)
    with pytest.raises(InputError, match="k must be"):
        knn_accuracy(x, y, k=0)
    with pytest.raises(InputError, match="C must be"):
        linear_probe_accuracy(x, y, C=0.0)


def test_score_features_reports_every_score_and_its_time():
    x, y = blobs(n_per_class=30, n_classes=3)
    scores = score_features(x, y)
    assert scores.knn_accuracy >= 0.95 and scores.linear_probe_accuracy >= 0.95
    assert scores.logme == pytest.approx(logme(x, y))
    assert (scores.n_examples, scores.n_classes, scores.n_features) == (90, 3, 8)
    assert scores.chance == pytest.approx(1 / 3)
    assert set(scores.seconds) == {"logme", "knn_accuracy", "linear_probe_accuracy"}
    assert json.loads(json.dumps(scores.to_dict()))["n_classes"] == 3


def test_score_per_cut_keeps_the_cut_order():
    x, y = blobs(n_per_class=20, n_classes=2)
    noise = np.random.default_rng(3).normal(size=x.shape)
    scores = score_per_cut({"low": noise, "high": x}, y)
    assert list(scores) == ["low", "high"]
    assert scores["high"].logme > scores["low"].logme
    assert scores["high"].knn_accuracy > scores["low"].knn_accuracy


def test_score_features_runtime_on_2000_by_256():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    x = 0.3 * rng.normal(size=(10, 256))[y] + rng.normal(size=(2000, 256))
    start = time.perf_counter()
    scores = score_features(x.astype(np.float32), y)
    total = time.perf_counter() - start
    print(
        f"\nscore_features 2000x256, 10 classes: {total:.2f}s total, "
        + ", ".join(f"{k} {v:.2f}s" for k, v in scores.seconds.items())
    )
    assert scores.linear_probe_accuracy > 0.9


# ---------------------------------------------------------------------------- pooled features


def batches_of(n: int, size: int = 32, batch: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    return list(images.split(batch))


def test_pooled_features_shapes_match_channels_at_each_resnet_cut():
    bb = create_backbone("resnet18", weights="none")
    feats = pooled_features_per_cut(bb, batches_of(5), bb.cut_points)
    assert list(feats) == ["conv1", "layer1", "layer2", "layer3", "layer4"]
    assert {cut: f.shape for cut, f in feats.items()} == {
        "conv1": (5, 64),
        "layer1": (5, 64),
        "layer2": (5, 128),
        "layer3": (5, 256),
        "layer4": (5, 512),
    }
    assert all(f.dtype == np.float32 for f in feats.values())


def test_pooled_features_equal_those_of_a_backbone_cut_there():
    x = batches_of(4)
    torch.manual_seed(0)
    full = create_backbone("resnet18", weights="none")
    torch.manual_seed(0)
    cut = create_backbone("resnet18", weights="none", cut="layer2")
    feats = pooled_features_per_cut(full, x, ["layer2"])["layer2"]
    with torch.no_grad():
        expected = torch.cat([cut.eval()(b).mean(dim=(2, 3)) for b in x]).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    # The cut backbone itself yields its own cut (our hook runs before its stop hook),
    # but nothing above it, and a factory works as well as a backbone.
    np.testing.assert_allclose(
        pooled_features_per_cut(cut, x, ["layer2"])["layer2"], expected, rtol=1e-5, atol=1e-6
    )
    with pytest.raises(InputError, match="did not run"):
        pooled_features_per_cut(lambda: cut, x, ["layer3"])


def test_pooled_features_stop_after_the_highest_cut_and_restore_modes():
    net = TinyNet()
    net.train()
    ran = []
    net.fc.register_forward_hook(lambda *_: ran.append(True))
    feats = pooled_features_per_cut(net, batches_of(4, size=16), ["stem_bn", "blocks.1"])
    assert feats["stem_bn"].shape == (4, 8) and feats["blocks.1"].shape == (4, 16)
    assert not ran  # the classifier above the cuts never ran
    assert net.training and net.stem_bn.training


def test_pooled_features_reject_unknown_cuts_and_bad_batches():
    net = TinyNet()
    with pytest.raises(InputError, match=r"unknown cut 'blocks\.9'"):
        pooled_features_per_cut(net, batches_of(2, size=16), ["blocks.9"])
    with pytest.raises(InputError, match="image tensors"):
        pooled_features_per_cut(net, [np.zeros((2, 3, 16, 16))], ["stem"])
    with pytest.raises(InputError, match="empty"):
        pooled_features_per_cut(net, [], ["stem"])


# ---------------------------------------------------------------------------- BN similarity


def two_bn_model() -> nn.Sequential:
    """BN -> BN with hand-set running statistics: the second layer's input is the
    first one's output, which is N(0, 1) exactly when the data match the first."""
    model = nn.Sequential(nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[0].running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 30.0]))
        model[0].running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 400.0]))
    return model


def drawn_like(model: nn.Sequential, shift_sd: float = 0.0, n: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mean = model[0].running_mean.view(1, 4, 1, 1)
    sd = model[0].running_var.sqrt().view(1, 4, 1, 1)
    return list((mean + sd * (torch.randn(n, 4, 8, 8, generator=g) + shift_sd)).split(16))


def test_bn_similarity_is_one_for_matching_data_and_lower_when_shifted():
    model = two_bn_model()
    model.train()
    before = model[0].running_mean.clone()
    same = bn_similarity(model, drawn_like(model))
    shifted = bn_similarity(model, drawn_like(model, shift_sd=2.0))
    assert [name for name, _ in same.per_layer] == ["0", "1"]
    assert same.overall > 0.99
    assert shifted.overall < 0.75
    assert all(s < 0.75 for _, s in shifted.per_layer)
    # Measuring neither updates the running statistics nor changes the mode.
    assert torch.equal(model[0].running_mean, before) and model.training
    assert bn_similarity(model, drawn_like(model), max_batches=1).overall > 0.98


def test_gaussian_overlap_is_symmetric_and_scale_free():
    a = gaussian_overlap(np.array([0.0]), np.array([1.0]), np.array([1.0]), np.array([4.0]))
    b = gaussian_overlap(np.array([10.0]), np.array([400.0]), np.array([0.0]), np.array([100.0]))
    c = gaussian_overlap(np.array([1.0]), np.array([4.0]), np.array([0.0]), np.array([1.0]))
    assert a == pytest.approx(b) and a == pytest.approx(c)
    assert gaussian_overlap(
        np.array([3.0]), np.array([2.0]), np.array([3.0]), np.array([2.0])
    ) == pytest.approx(1.0)


def test_bn_similarity_per_cut_of_a_backbone():
    bb = create_backbone("resnet18", weights="none")
    sim = bn_similarity(bb, batches_of(4))
    by_cut = bn_layers_by_cut(bb)
    assert list(by_cut) == bb.cut_points
    assert by_cut["conv1"] == ["bn1"]
    assert sorted(n for layers in by_cut.values() for n in layers) == sorted(
        n for n, _ in sim.per_layer
    )
    per_cut = sim.per_cut(by_cut)
    assert list(per_cut) == bb.cut_points and all(0 < v <= 1 for v in per_cut.values())
    assert json.loads(json.dumps(sim.to_dict()))["overall"] == pytest.approx(sim.overall)


def test_bn_similarity_skips_layers_pruned_by_a_cut_and_models_without_bn():
    bb = create_backbone("resnet18", weights="none", cut="layer1")
    names = [n for n, _ in bn_similarity(bb, batches_of(2)).per_layer]
    assert names and all(n == "bn1" or n.startswith("layer1.") for n in names)
    empty = bn_similarity(nn.Sequential(nn.Conv2d(3, 4, 1)), batches_of(2))
    assert empty == BNSimilarity(per_layer=[], overall=empty.overall)
    assert math.isnan(empty.overall) and empty.to_dict()["overall"] is None
    assert math.isnan(empty.per_cut({"x": ["0"]})["x"])


def test_measure_per_cut_gives_both_measurements_from_one_pass():
    bb = create_backbone("resnet18", weights="none")
    x = batches_of(5)
    calls = []
    bb.model.conv1.register_forward_hook(lambda *_: calls.append(True))
    feats, sim = measure_per_cut(bb, x)  # cuts=None: every cut point
    assert len(calls) == len(x)  # one pass
    assert list(feats) == bb.cut_points
    separate = pooled_features_per_cut(bb, x, bb.cut_points)
    for cut in feats:
        np.testing.assert_array_equal(feats[cut], separate[cut])
    assert sim == bn_similarity(bb, x)


# ---------------------------------------------------------------------------- real weights


def digits_batches(bb, size: int = 32, batch: int = 256):
    """sklearn's 8x8 digits as 3-channel images, resized and normalised as the
    backbone's pretraining was (R7)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", align_corners=False
    ).repeat(1, 3, 1, 1)
    mean = torch.tensor(bb.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bb.data_config["std"]).view(1, 3, 1, 1)
    return list(((images - mean) / std).split(batch)), digits.target


@pytest.mark.slow
@pytest.mark.realweights
def test_digits_through_efficientnet_lite0_per_cut():
    """The measured note of issue 5: per-cut scores on a dataset unlike ImageNet."""
    bb = create_backbone("efficientnet_lite0")
    batches, labels = digits_batches(bb)
    start = time.perf_counter()
    per_cut, similarity = measure_per_cut(bb, batches)
    extract = time.perf_counter() - start
    scores = score_per_cut(per_cut, labels)
    bn = similarity.per_cut(bn_layers_by_cut(bb))
    print(
        f"\ndigits ({len(labels)} images, 32 px) through efficientnet_lite0: features at "
        f"{len(per_cut)} cuts and BN statistics in one pass, {extract:.1f}s; "
        f"BN similarity overall {similarity.overall:.3f}"
    )
    print(
        f"{'cut':<10}{'dim':>6}{'logme':>8}{'knn':>7}{'probe':>7}{'bn_sim':>8}"
        "   seconds (logme/knn/probe)"
    )
    for cut, s in scores.items():
        secs = "/".join(f"{v:.2f}" for v in s.seconds.values())
        print(
            f"{cut:<10}{s.n_features:>6}{s.logme:>8.3f}{s.knn_accuracy:>7.3f}"
            f"{s.linear_probe_accuracy:>7.3f}{bn[cut]:>8.3f}   {secs}"
        )
    assert all(s.linear_probe_accuracy > 3 * s.chance for s in scores.values())
    assert all(0 < v <= 1 for v in bn.values())
