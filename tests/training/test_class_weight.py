"""``class_weight="balanced"``: each class's loss weighted n_samples / (n_classes *
count), scikit-learn's definition, in the head phase and in fine-tuning, so a class
with few images is not simply outvoted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import blobs, make_image_folder
from transferkit.heads import ClassifierHead, HeadConfig, balanced_class_weights
from transferkit.training import EarlyStopping, Objective, PhaseConfig, PhaseData, fit_phase


def test_balanced_weights_are_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 50 + [1] * 5 + [2] * 20)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    weights = balanced_class_weights(torch.from_numpy(y), 3)
    assert torch.allclose(weights, torch.tensor(expected, dtype=torch.float32))
    assert weights.tolist() == pytest.approx([75 / (3 * 50), 75 / (3 * 5), 75 / (3 * 20)])


def _imbalanced(n_classes: int, seed: int):
    """Overlapping blobs; class 0 keeps 8 of its 120 training points. The test set is
    balanced, drawn from the same blobs."""
    x, y = blobs(n_per_class=240, n_classes=n_classes, dim=4, spread=1.2, seed=seed)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[:120]] = True
        if c == 0:
            test[idx[128:]] = True  # dropped from training (and scored as test)
    train = ~test
    t = torch.from_numpy
    return t(x[train]).float(), t(y[train]), t(x[test]).float(), t(y[test])


def _minority_recall(n_classes: int, balanced: bool, seed: int = 0) -> float:
    x, y, x_test, y_test = _imbalanced(n_classes, seed)
    torch.manual_seed(seed)
    head = ClassifierHead(x.shape[1], n_classes, HeadConfig(dropout=0.0))
    weights = balanced_class_weights(y, n_classes) if balanced else None
    data = PhaseData(lambda epoch: [(x, y)], lambda: [(x, y)], steps_per_epoch=1)
    fit_phase(
        head,
        torch.optim.AdamW(head.parameters(), lr=0.1),
        data,
        PhaseConfig(epochs=150, schedule="constant"),
        Objective.of_head(head, class_weights=weights),
        callbacks=[EarlyStopping(patience=150)],
    )
    with torch.no_grad():
        predicted = head.probabilities(head(x_test)).argmax(1)
    minority = y_test == 0
    return float((predicted[minority] == 0).float().mean())


@pytest.mark.parametrize("n_classes", [2, 3])  # 2: the one-logit sigmoid head
def test_balanced_weights_raise_the_minority_classs_recall(n_classes):
    plain = _minority_recall(n_classes, balanced=False)
    balanced = _minority_recall(n_classes, balanced=True)
    assert balanced > plain + 0.2, (plain, balanced)


def test_both_phases_train_with_the_balanced_weights(tmp_path, monkeypatch):
    """The head phase (trained by epochs) and fine-tuning each get the training
    labels' weights."""
    from transferkit import FitConfig, create_backbone, train
    from transferkit.data import load_data
    from transferkit.strategies import fine_tune, head

    root = tmp_path / "data"
    make_image_folder(root, classes=("red", "green"), per_class=12, size=16)
    for f in sorted((root / "green").iterdir())[3:]:
        f.unlink()  # green keeps 3 images
    splits = load_data(root, val_split=0.2, seed=0)
    seen = []
    for module in (head, fine_tune):
        real = module.fit_phase

        def spy(*args, _real=real, **kwargs):
            seen.append((args[3].name, args[4].class_weights))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, "fit_phase", spy)
    config = FitConfig(
        strategy="fine-tune",
        class_weight="balanced",
        selection="holdout",
        image_size=16,
        head_epochs=2,
        fine_tune_epochs=1,
        lr=1e-2,
        fine_tune_lr=1e-3,
        batch_size=8,
        workers=0,
        cache_dir=str(tmp_path / "cache"),
    ).validate()
    train(create_backbone("test_resnet", weights="none"), splits, config)
    counts = torch.bincount(torch.tensor([e.label for e in splits.train]), minlength=2)
    expected = len(splits.train) / (2 * counts.float())
    assert [name for name, _ in seen] == ["head", "fine-tune"]
    for _, weights in seen:
        assert torch.allclose(weights, expected)


def test_the_cross_validated_head_weighs_each_image_by_its_class(tmp_path, monkeypatch):
    """The head fine-tuning starts from (chosen by cross-validation) is selected and
    fitted with each training image weighted by its class's balanced weight."""
    from transferkit import FitConfig, create_backbone, probe_head, train
    from transferkit.data import load_data

    root = tmp_path / "data"
    make_image_folder(root, classes=("red", "green"), per_class=12, size=16)
    for f in sorted((root / "green").iterdir())[3:]:
        f.unlink()
    splits = load_data(root, val_split=0.2, seed=0)
    seen = []
    real = probe_head.select

    def spy(x, y, num_classes, **kwargs):
        seen.append((y.clone(), kwargs["sample_weight"]))
        return real(x, y, num_classes, **kwargs)

    monkeypatch.setattr(probe_head, "select", spy)
    config = FitConfig(
        strategy="fine-tune",
        class_weight="balanced",
        image_size=16,
        fine_tune_epochs=1,
        batch_size=8,
        workers=0,
        cache_dir=str(tmp_path / "cache"),
    ).validate()
    result = train(create_backbone("test_resnet", weights="none"), splits, config)
    assert result.phases[0].epochs_run == 1 and "cross-validation" in result.phases[0].stopped
    ((y, weights),) = seen
    counts = torch.bincount(y, minlength=2).double()
    assert torch.allclose(weights, (len(y) / (2 * counts))[y])
