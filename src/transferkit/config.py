"""Typed configuration for ``fit``, with defaults owned here.

Precedence: these defaults < a JSON config file (``--config``) < CLI flags. The
resolved config is written to the run directory, so a run can be rebuilt.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .choices import SELECTIONS
from .compute import PRECISIONS
from .errors import InputError, close_matches
from .freezing import BN_POLICIES
from .heads import HeadConfig

STRATEGIES = ("auto", "feature-extract", "fine-tune")  # built in; the command line's choices
DEVICES = ("cpu", "cuda", "auto")
CLASS_WEIGHTS = ("balanced",)  # or None: every image counts the same
# Keys older config files and run folders may hold -> today's names.
RENAMED_KEYS = {"epochs": "head_epochs"}

log = logging.getLogger("transferkit")


@dataclass
class FitConfig:
    """Everything that decides what ``fit`` does. See docs/training.md."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    cut: str | None = None
    strategy: str = "auto"
    unfreeze: str = "all"  # "all" or "top:N" whole blocks
    bn: str = "frozen"
    head: HeadConfig = field(default_factory=HeadConfig)
    image_size: int | None = None
    val_split: float = 0.2
    seed: int = 0
    device: str = "auto"
    # GPU path (docs/distributed.md): bf16 autocast where supported, torch.compile
    precision: str = "auto"  # "auto" (bf16 on a capable GPU, else fp32), "fp32", "bf16"
    compile: bool = False
    # phase 1: the head on cached features (trains to convergence: many cheap epochs)
    head_epochs: int = 100
    lr: float = 3e-3
    patience: int = 8
    head_batch_size: int = 256
    # phase 2: end-to-end fine-tuning, gently: a 10-100x lower learning rate
    fine_tune_epochs: int = 15
    fine_tune_lr: float = 3e-4
    fine_tune_patience: int = 8
    layer_decay: float | None = None
    batch_size: int = 32  # the global batch: split evenly among torchrun processes
    augment: bool = True
    label_smoothing: float = 0.0
    weight_decay: float = 1e-4
    # "balanced": each class's loss weighted n_samples / (n_classes * its count)
    class_weight: str | None = None
    # how the head phase chooses its model: "auto" (k-fold cross-validation on every
    # label when the data are small, else the held-out validation split), "cv", "holdout"
    selection: str = "auto"
    schedule: str = "cosine"
    workers: int | None = None
    cache_dir: str | None = None
    # how far to trust a prediction (docs/results.md): the share of known images that
    # may be called unknown, and the coverage of the conformal prediction sets
    unknown_rate: float = 0.05
    coverage: float = 0.9
    # test-time augmentation (mirror images), kept only if it improves validation
    tta: bool = False
    # look for images shared between splits (docs/doctor.md): cheap, on by default
    leak_check: bool = True

    def validate(self) -> FitConfig:
        """Check every setting; an :class:`InputError` names the first bad one, the
        value received and what is allowed. Returns ``self``."""
        for option, value, allowed in (
            ("strategy", self.strategy, _strategies()),
            ("--bn", self.bn, BN_POLICIES),
            ("--device", self.device, DEVICES),
            ("--precision", self.precision, PRECISIONS),
            ("--selection", self.selection, SELECTIONS),
        ):
            if value not in allowed:
                raise InputError(f"{option} {value!r} is not one of {', '.join(allowed)}")
        self.unfreeze_top()  # validates the syntax
        if not 0.0 < self.val_split < 1.0:
            raise InputError(f"--val-split must be between 0 and 1, got {self.val_split}")
        self._check_gentle_fine_tuning()
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise InputError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if self.class_weight is not None and self.class_weight not in CLASS_WEIGHTS:
            raise InputError(
                f"--class-weight {self.class_weight!r} is not one of {', '.join(CLASS_WEIGHTS)}; "
                "leave it out to weight every image the same"
            )
        for name in (
            "head_epochs",
            "fine_tune_epochs",
            "batch_size",
            "head_batch_size",
            "patience",
        ):
            if getattr(self, name) < 1:
                raise InputError(
                    f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.image_size is not None and self.image_size < 8:
            raise InputError(f"--image-size must be >= 8 pixels, got {self.image_size}")
        self.head.validate()
        self._check_trust()
        return self

    def _check_trust(self) -> None:
        from .trust.conformal import check_coverage
        from .trust.ood import check_rate

        check_rate(self.unknown_rate)
        check_coverage(self.coverage)
        if not isinstance(self.tta, bool):
            raise InputError(f"tta must be true or false, got {self.tta!r}")

    def _check_gentle_fine_tuning(self) -> None:
        """Fine-tuning runs 10-100x below the head's learning rate: a pretrained base
        trained at the head's rate loses what it learned in pretraining."""
        ratio = self.lr / self.fine_tune_lr if self.fine_tune_lr > 0 else float("inf")
        if self.strategy != "feature-extract" and not 10 <= ratio <= 100 + 1e-9:
            raise InputError(
                f"fine-tune learning rate {self.fine_tune_lr:g} must be 10-100x below the head's "
                f"{self.lr:g} (fine-tune gently); it is {ratio:.3g}x"
            )

    def unfreeze_top(self) -> int | None:
        """``None`` for "all", else the number of top blocks to unfreeze."""
        if self.unfreeze == "all":
            return None
        prefix, _, n = self.unfreeze.partition(":")
        if prefix != "top" or not n.isdigit() or int(n) < 1:
            raise InputError(f"--unfreeze {self.unfreeze!r}: expected 'all' or 'top:N' (N >= 1)")
        return int(n)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FitConfig:
        """Settings from a dict (a config file, a run folder's ``config.json``). A key
        renamed since (``epochs``: now ``head_epochs``) is read under its new name,
        with a warning."""
        data = _renamed(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hits = close_matches(unknown[0], known, n=2)
            hint = (
                f"did you mean {' or '.join(map(repr, hits))}?"
                if hits
                else f"known keys: {', '.join(sorted(known))}"
            )
            raise InputError(f"unknown config key {unknown[0]!r}; {hint}")
        if isinstance(data.get("head"), dict):
            data["head"] = HeadConfig(**data["head"])
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict | None = None) -> FitConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read config file {str(path)!r}: {exc}") from None
        data.update(overrides or {})
        return cls.from_dict(data)


def _renamed(data: dict) -> dict:
    """A copy of ``data`` with the old keys under their new names."""
    data = dict(data)
    for old, new in RENAMED_KEYS.items():
        if old not in data:
            continue
        if new in data:
            raise InputError(
                f"config has both {old!r} and {new!r}; {old!r} is the old name of "
                f"{new!r}: keep only {new!r}"
            )
        log.warning("config key %r is now called %r; reading it as %r", old, new, new)
        data[new] = data.pop(old)
    return data


def _strategies() -> tuple[str, ...]:
    """``auto`` and every strategy registered (``strategies.register_strategy``), so a
    plugged-in strategy is a valid setting like the built-in ones."""
    from .strategies import STRATEGIES as registered

    return ("auto", *registered)
