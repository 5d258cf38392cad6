"""The plain loop: one training epoch and one evaluation (torchvision-reference style).

Nothing here knows about phases, checkpoints, progress or early stopping; those are
callbacks around :func:`~transferkit.training.phase.fit_phase`. The same functions
run in one process or in many (torchrun, DDP): they talk to the other processes only
through a :class:`~transferkit.distributed.Collective` (sums and the NaN check), whose
single-process version does nothing. Forward passes run under the
:class:`~transferkit.compute.Compute`'s autocast with batches moved non-blocking (and
NHWC where that is faster); losses are computed in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..compute import Compute, as_compute
from ..distributed import SINGLE, Collective
from ..errors import InputError

SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop computes: device, precision and layout (``compute``),
    and the other torchrun processes, if any (``collective``). The default is one
    process, float32 on the CPU."""

    compute: Compute = field(default_factory=lambda: Compute(torch.device("cpu")))
    collective: Collective = SINGLE

    @classmethod
    def on(cls, device: Compute | str | torch.device = "cpu", collective=SINGLE) -> Runtime:
        return cls(as_compute(device), collective)


@dataclass(frozen=True)
class Objective:
    """What a model is trained and judged by: a loss on logits and the rule that turns
    logits into class probabilities (softmax, or sigmoid for one binary logit)."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    probabilities: Callable[[torch.Tensor], torch.Tensor]
    class_weights: torch.Tensor | None = None  # what ``loss`` weights each class by

    @classmethod
    def of_head(
        cls, head, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None
    ) -> Objective:
        """A classifier head's own loss (with label smoothing and, if given, a weight
        per class) and probabilities."""
        return cls(
            lambda z, t: head.loss(z, t, label_smoothing, class_weights),
            head.probabilities,
            class_weights,
        )


@dataclass
class EpochStats:
    """Sums over one pass of training batches; ``finite`` is False when a loss was
    NaN or infinite (the pass stopped there, before that batch's update)."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    finite: bool = True

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


@dataclass
class Evaluation:
    """Mean loss and accuracy over some batches, and (with ``keep``) the per-example
    probabilities and labels."""

    loss: float
    accuracy: float
    probabilities: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def create_scheduler(
    optimizer, schedule: str, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0
):
    """A per-batch learning-rate schedule: ``constant``, ``cosine`` (to 1% of the base
    rate, after an optional linear warmup) or ``onecycle`` (30% warmup, then cosine)."""
    if schedule not in SCHEDULES:
        raise InputError(f"schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    total = max(1, epochs * steps_per_epoch)
    warmup = int(warmup_epochs * steps_per_epoch)
    if schedule == "onecycle":
        warmup = max(warmup, int(0.3 * total))

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler,
    objective: Objective,
    *,
    runtime: Runtime | None = None,
    grad_clip: float | None = None,
    on_batch: Callable[[EpochStats], None] | None = None,
) -> EpochStats:
    """One pass over ``batches``: forward, loss, backward, clip, step, schedule step.

    Stops at the first non-finite loss (``finite=False``) without applying it. Every
    process must agree on that before anyone enters backward (DDP's gradient
    all-reduce), or the others would wait there forever. ``on_batch`` sees the running
    sums after each batch (a progress bar's live loss and accuracy).
    """
    runtime = runtime or Runtime()
    compute, collective = runtime.compute, runtime.collective
    stats = EpochStats()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for x, y in batches:
        x, y = compute.to_device(x), y.to(compute.device, non_blocking=True)
        with compute.autocast():
            logits = model(x)
        logits = logits.float()
        loss = objective.loss(logits, y)
        if not collective.all_true(bool(torch.isfinite(loss))):
            stats.finite = False
            return stats
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:  # gradients are already averaged over processes here
            nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        stats.loss_sum += float(loss.detach()) * len(y)
        stats.correct += int((objective.probabilities(logits.detach()).argmax(1) == y).sum())
        stats.count += len(y)
        if on_batch is not None:
            on_batch(stats)
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    objective: Objective,
    *,
    runtime: Runtime | None = None,
    keep: bool = False,
) -> Evaluation:
    """Mean loss and accuracy over ``batches`` with the model in eval mode (both NaN
    when there are no examples).

    With a multi-process ``collective`` each process passes its shard of the batches
    and gets the totals over all of them, so every process sees the same numbers and
    takes the same early-stopping decision; ``keep``'s probabilities stay per process.
    """
    runtime = runtime or Runtime()
    compute, collective = runtime.compute, runtime.collective
    was = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    probs_kept, labels_kept = [], []
    try:
        for x, y in batches:
            x, y = compute.to_device(x), y.to(compute.device, non_blocking=True)
            with compute.autocast():
                logits = model(x)
            logits = logits.float()
            total_loss += float(objective.loss(logits, y)) * len(y)
            probs = objective.probabilities(logits)
            correct += int((probs.argmax(1) == y).sum())
            n += len(y)
            if keep:
                probs_kept.append(probs.float().cpu())
                labels_kept.append(y.cpu())
    finally:
        model.train(was)
    total_loss, correct, n = collective.sum([total_loss, correct, n])
    if not n:  # nothing to judge by: say so, rather than a perfect loss of 0
        total_loss = correct = math.nan
    return Evaluation(
        loss=total_loss / max(n, 1),
        accuracy=correct / max(n, 1),
        probabilities=torch.cat(probs_kept) if probs_kept else None,
        labels=torch.cat(labels_kept) if labels_kept else None,
    )
