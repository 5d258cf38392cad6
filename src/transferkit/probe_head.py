"""A head fitted like the probe that measured the features: regularised logistic
regression, solved to convergence, its strength chosen by cross-validation.

On a few images per class, a head trained by Adam with dropout and early stopping on
a handful of validation images is a noisy estimator; multinomial logistic regression
on standardised features, fitted to convergence with an L2 penalty chosen by k-fold
cross-validation, is the classic strong baseline (and what the advisor's probe
measures). Here it is fitted in torch with L-BFGS, and the standardisation is folded
into the weights, so the result is the same ``nn.Linear`` head that fine-tuning,
saving and export already handle: nothing extra at inference.

Candidates (each penalty of a grid, and a nearest-class-mean classifier for the
smallest sets; each again with the features of augmented views of the training
images added, when given) are compared by stratified, seeded k-fold
cross-validation; the best is refitted on every labelled image given.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

# C as scikit-learn means it (inverse strength, on standardised features)
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
NCM = "nearest class mean"
MAX_FOLDS = 5
VIEWS = " + flipped views"  # a candidate trained on each image and its mirror image


@dataclass
class LinearClassifier:
    """``logits = x @ weight.T + bias`` on raw (unstandardised) features."""

    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor  # (classes,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.dtype) @ self.weight.T + self.bias


@dataclass
class Candidate:
    """One way to fit the head, and how it cross-validated."""

    name: str
    c: float | None = None  # the penalty's C; None for nearest class mean
    views: bool = False  # trained on the augmented views too
    accuracy: float = math.nan
    accuracy_std: float = math.nan
    log_loss: float = math.nan

    def to_dict(self) -> dict:
        return {
            "candidate": self.name,
            "cv_accuracy": self.accuracy,
            "cv_accuracy_std": self.accuracy_std,
            "cv_log_loss": self.log_loss,
        }


@dataclass
class Selection:
    """What cross-validation compared and kept, and the out-of-fold probabilities of
    the kept candidate (each image predicted by a model that did not see it)."""

    folds: int
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    oof_probabilities: torch.Tensor | None = None

    def to_dict(self) -> dict:
        return {
            "method": f"{self.folds}-fold stratified cross-validation"
            if self.folds
            else "none (a class has a single image): the default penalty",
            "folds": self.folds,
            "chosen": self.chosen.name if self.chosen else None,
            "cv_accuracy": self.chosen.accuracy if self.chosen else None,
            "cv_accuracy_std": self.chosen.accuracy_std if self.chosen else None,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (a constant feature gets 1)."""
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    c: float,
    *,
    sample_weight: torch.Tensor | None = None,
) -> LinearClassifier:
    """Multinomial logistic regression on standardised ``x`` with scikit-learn's
    objective (``0.5 * |W|^2 + C * sum of cross-entropies``), solved with L-BFGS in
    float64; returned with the standardisation folded into the weights."""
    with _one_thread():
        return fit_logistic_path(x, y, num_classes, [c], sample_weight=sample_weight)[0]


def fit_logistic_path(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    cs,
    *,
    sample_weight: torch.Tensor | None = None,
) -> list[LinearClassifier]:
    """:func:`fit_logistic` for each of ``cs`` (ascending: each fit starts from the
    previous, more penalised solution, the usual regularisation path)."""
    x = x.double()
    mean, std = standardizer(x)
    z = (x - mean) / std
    w = torch.zeros(num_classes, z.shape[1], dtype=torch.float64)
    b = torch.zeros(num_classes, dtype=torch.float64)
    sw = None if sample_weight is None else sample_weight.double()
    models = []
    for c in cs:
        w, b = _solve(z, y, c, sw, w, b)
        models.append(_unstandardize(w, b, mean, std))
    return models


def _solve(z, y, c: float, sw, w0, b0, max_iter: int = 100):
    n = len(y)
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    strength = 0.5 / (c * n)  # the same optimum, the loss scaled by 1 / (C n)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        ce = F.cross_entropy(z @ w.T + b, y, reduction="none")
        ce = ce if sw is None else sw * ce
        loss = ce.sum() / n + strength * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def fit_class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> LinearClassifier:
    """Nearest class mean on standardised features as a linear classifier:
    ``-|z - mu_c|^2 / d`` up to a constant is linear in ``z``."""
    x = x.double()
    mean, std = standardizer(x)
    z = (x - mean) / std
    mu = torch.stack([z[y == k].mean(0) for k in range(num_classes)])
    d = z.shape[1]
    return _unstandardize(2 * mu / d, -(mu * mu).sum(1) / d, mean, std)


def _unstandardize(w, b, mean, std) -> LinearClassifier:
    weight = w / std
    return LinearClassifier(weight, b - weight @ mean)


def fit_candidate(candidate: Candidate, x, y, num_classes, sample_weight=None, views=None):
    """``candidate`` fitted on every row of ``x`` (and, for a candidate of views, on
    the rows of ``views`` too: ``(V, N, D)``, each view of each image)."""
    if candidate.views:
        x, y, sample_weight = with_views(x, y, sample_weight, views)
    if candidate.c is None:
        return fit_class_means(x, y, num_classes)
    return fit_logistic(x, y, num_classes, candidate.c, sample_weight=sample_weight)


def with_views(x, y, sample_weight, views):
    """The rows of ``x`` and of each view, each with its image's label and weight."""
    k = 1 + len(views)
    sw = None if sample_weight is None else sample_weight.repeat(k)
    return torch.cat([x, *views]), y.repeat(k), sw


def candidates_for(y: torch.Tensor, num_classes: int, views: bool = False) -> list[Candidate]:
    """The penalty grid; nearest class mean too when every class is very small; with
    ``views``, each again trained on the augmented views too."""
    grid = [Candidate(f"logistic regression, C={c:g}", c) for c in C_GRID]
    counts = torch.bincount(y, minlength=num_classes)
    if int(counts.max()) <= 10:
        grid.append(Candidate(NCM))
    if views:
        grid += [Candidate(c.name + VIEWS, c.c, views=True) for c in grid]
    return grid


@contextlib.contextmanager
def _one_thread():
    """These are small matrices: on shared cores, OpenMP's waiting threads made each
    loss evaluation ~15 ms instead of ~0.1 ms (a 12-image selection: 15 s vs 0.3 s)."""
    from .transferability._common import single_threaded

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with single_threaded():
            yield
    finally:
        torch.set_num_threads(threads)


def select(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    sample_weight: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
) -> Selection:
    """Cross-validate every candidate (stratified, seeded folds: as many as the
    smallest class allows, at most 5) and keep the best by accuracy (log-loss breaks
    ties, then no views, then the stronger penalty).

    ``views`` (``(V, N, D)``: V augmented views of each image) adds the candidates
    trained on them too; a fold trains on the views of its training images only and
    is scored on the original images it held out, so no view of a held-out image
    leaks into training."""
    from sklearn.model_selection import StratifiedKFold

    counts = torch.bincount(y, minlength=num_classes)
    folds = min(MAX_FOLDS, int(counts[counts > 0].min()))
    candidates = candidates_for(y, num_classes, views is not None)  # penalties ascending
    if folds < 2:
        chosen = next(c for c in candidates if c.c == 1.0)
        return Selection(0, candidates, chosen, None)
    splits = list(
        StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y.numpy())
    )
    with _one_thread():
        oof = _cross_validate(candidates, x, y, num_classes, splits, sample_weight, views)
    chosen = min(candidates, key=lambda c: (-round(c.accuracy, 9), c.log_loss, c.views, c.c or 0))
    return Selection(folds, candidates, chosen, oof[chosen.name].float())


def _fold_models(candidates, x, y, num_classes, sample_weight) -> dict[str, LinearClassifier]:
    """One model per candidate on one fold's training part (the penalties as a path)."""
    penalised = [c for c in candidates if c.c is not None]
    path = fit_logistic_path(
        x, y, num_classes, [c.c for c in penalised], sample_weight=sample_weight
    )
    models = {c.name: m for c, m in zip(penalised, path, strict=True)}
    for c in candidates:
        if c.c is None:
            models[c.name] = fit_class_means(x, y, num_classes)
    return models


def _cross_validate(candidates, x, y, num_classes, splits, sample_weight, views=None) -> dict:
    """Fills every candidate's scores; returns their out-of-fold probabilities."""
    probs = {c.name: torch.zeros(len(y), num_classes, dtype=torch.float64) for c in candidates}
    per_fold: dict[str, list[float]] = {c.name: [] for c in candidates}
    plain = [c for c in candidates if not c.views]
    viewed = [c for c in candidates if c.views]
    for train, test in splits:
        sw = None if sample_weight is None else sample_weight[train]
        models = _fold_models(plain, x[train], y[train], num_classes, sw)
        if viewed:
            rows = with_views(x[train], y[train], sw, views[:, train])
            models |= _fold_models(viewed, *rows[:2], num_classes, rows[2])
        for cand in candidates:
            model = models[cand.name]
            p = model.logits(x[test]).softmax(1)
            probs[cand.name][test] = p
            per_fold[cand.name].append(float((p.argmax(1) == y[test]).double().mean()))
    for cand in candidates:
        p = probs[cand.name]
        cand.accuracy = float((p.argmax(1) == y).double().mean())
        cand.accuracy_std = float(np.std(per_fold[cand.name]))
        cand.log_loss = log_loss(p, y)
    return probs


def log_loss(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-probability of the true classes."""
    return float(-probs[torch.arange(len(y)), y].clamp_min(1e-12).log().mean())


def load_into(head, model: LinearClassifier) -> None:
    """Put ``model`` into a linear ``ClassifierHead``'s last layer (one logit, the
    difference of the two, for a binary head)."""
    linear = head.layers[-1]
    weight, bias = model.weight, model.bias
    if head.binary:
        weight, bias = (weight[1] - weight[0])[None], (bias[1] - bias[0])[None]
    with torch.no_grad():
        linear.weight.copy_(weight.to(linear.weight.dtype))
        linear.bias.copy_(bias.to(linear.bias.dtype))
