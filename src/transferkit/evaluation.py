"""Evaluating a trained model on a labelled folder or CSV: predictions -> ``Metrics``.

Which images count: when DATA has a test split (``test/`` beside ``train/``, or a CSV
``split`` column), only the test images; otherwise every usable image. Files are judged
by the same scanner as ``fit`` (unreadable ones are skipped with their reason), and a
test image that is a byte-for-byte copy of a training image is dropped, as in ``fit``,
so the numbers measure generalisation rather than memory.

The model may be a run directory or an exported ONNX/TorchScript file: evaluation goes
through :class:`~transferkit.predict.Predictor`, so an export can be checked on real
data before it ships.

Example:
    >>> ev = evaluate_run("runs/cats", "data/")          # doctest: +SKIP
    >>> ev.split, round(ev.metrics.accuracy, 3)          # doctest: +SKIP
    ('test', 0.947)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .calibration import rescale
from .data.scanning import ScanOptions, verify_files
from .data.sources import resolve_source
from .data.splits import remove_leaks
from .errors import InputError
from .predict import Predictor, load_predictor
from .reports.metrics import Metrics, compute_metrics, expected_calibration_error


@dataclass
class Evaluation:
    """The metrics of a model on a dataset, and what was evaluated.

    Attributes:
        metrics: every metric (``reports.metrics.compute_metrics``).
        split: ``"test"`` (DATA's test split) or ``"all"`` (every usable image).
        data: the DATA argument.
        model: what made the predictions (``"run runs/cats"``, ``"onnx cats.onnx"``).
        skipped: files not evaluated, as ``{"path", "reason"}``.
        temperature: the model's calibration temperature (1.0: uncalibrated).
        ece_uncalibrated: the calibration error of the same images before
            temperature scaling (``metrics.ece`` is the calibrated model's).
    """

    metrics: Metrics
    split: str
    data: str
    model: str
    skipped: list[dict] = field(default_factory=list)
    temperature: float = 1.0
    ece_uncalibrated: float | None = None
    trust: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The metrics' own fields first (``ece_uncalibrated`` and ``temperature``
        right after ``ece``), the trust fields (``coverage``, ``mean_set_size``,
        ``unknown_share``, with ``--ood`` ``ood_auroc`` and ``ood_unknown_share``),
        then where they come from."""
        metrics = {}
        for key, value in self.metrics.to_dict().items():
            metrics[key] = value
            if key == "ece":
                metrics["ece_uncalibrated"] = self.ece_uncalibrated
                metrics["temperature"] = self.temperature
        return {
            **metrics,
            **self.trust,
            "split": self.split,
            "data": self.data,
            "model": self.model,
            "skipped": list(self.skipped),
        }


def evaluate_run(
    model: str | os.PathLike,
    data,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    top_k: Iterable[int] = (1, 3, 5),
    backbone=None,
    ood=None,
) -> Evaluation:
    """Evaluate a run directory (or exported model file) on DATA.

    Args:
        model: a run directory, or an ``.onnx``/TorchScript file with its sidecar.
        data: a folder of class folders (or ``train/`` [``val/``] ``test/``), or a CSV.
        device: where a torch model runs (``cpu``, ``cuda``, ``auto``).
        batch_size: images per forward pass.
        top_k: which top-k accuracies to report (k below the class count).
        backbone: the backbone module, for a run trained on a Python module.
        ood: a folder (file, glob) of images of none of the model's classes: adds the
            AUROC of the OOD score telling them from DATA's images, and the share of
            them called unknown.

    Raises:
        InputError: the model fails to load (e.g. altered weights), DATA is unusable,
            or DATA holds a class the model does not know.
    """
    predictor = load_predictor(model, device=device, batch_size=batch_size, backbone=backbone)
    return evaluate_predictor(predictor, data, top_k=top_k, ood=ood)


def evaluate_predictor(
    predictor: Predictor, data, *, top_k: Iterable[int] = (1, 3, 5), ood=None
) -> Evaluation:
    """Evaluate an already loaded predictor on DATA (see :func:`evaluate_run`)."""
    paths, labels, split, skipped = evaluation_examples(data, predictor.classes)
    done, probs, scores, failures = predictor.score_files(paths)
    skipped += [f.to_dict() for f in failures]
    if not done:
        raise InputError(f"none of the {len(paths)} images in {os.fspath(data)!r} could be read")
    label_of = dict(zip(paths, labels, strict=True))
    y = np.array([label_of[p] for p in done], dtype=np.int64)
    metrics = compute_metrics(probs, y, predictor.classes, top_k=top_k)
    temperature = predictor.temperature
    before = expected_calibration_error(rescale(probs, 1 / temperature), y)
    trust = trust_fields(predictor, probs, y, scores, ood)
    return Evaluation(
        metrics, split, _name(data), predictor.source, skipped, temperature, before, trust
    )


def trust_fields(predictor: Predictor, probs, labels, scores, ood=None) -> dict:
    """``coverage`` and ``mean_set_size`` of the prediction sets, ``unknown_share``
    (known images called unknown), and with ``ood`` images ``ood_auroc`` and
    ``ood_unknown_share``; null where the model cannot tell, with ``trust_notes``."""
    from .trust import auroc, set_metrics

    trust = predictor.trust
    quantile = trust.quantile if trust is not None else None
    threshold = trust.threshold if trust is not None else None
    fields = {"coverage": None, "mean_set_size": None}
    if quantile is not None:
        fields.update(set_metrics(probs, labels, quantile))
    fields["coverage_target"] = trust.coverage if trust is not None else None
    fields["unknown_share"] = _share_above(scores, threshold)
    fields["unknown_rate"] = trust.unknown_rate if trust is not None else None
    if ood is not None:
        from .predict import expand_inputs

        paths, _ = expand_inputs([ood])
        if not paths:
            raise InputError(
                f"--ood {os.fspath(ood)!r}: no image files there; give a folder of images"
            )
        _, _, out_scores, _ = predictor.score_files(paths)
        fields["ood_images"] = len(paths)
        fields["ood_auroc"] = auroc(scores, out_scores) if scores is not None else None
        fields["ood_unknown_share"] = _share_above(out_scores, threshold)
    fields["trust_notes"] = list(predictor.trust_notes)
    return fields


def _share_above(scores, threshold) -> float | None:
    if scores is None or threshold is None or len(scores) == 0:
        return None
    return float(np.mean(np.asarray(scores) > threshold))


def evaluation_examples(data, classes: list[str]) -> tuple[list[str], list[int], str, list[dict]]:
    """The images to evaluate, their labels as indices into ``classes``, and the rest.

    Returns:
        ``(paths, labels, split, skipped)`` where ``split`` is ``"test"`` or ``"all"``
        and ``skipped`` lists every file not used, with the reason.

    Raises:
        InputError: DATA cannot be read, holds no usable image, or has a class the
            model was not trained on (the message names it and the known classes).
    """
    src = resolve_source(data)
    if src.errors:
        raise InputError(src.errors[0])
    scan = verify_files(src.candidates, root=src.root, options=ScanOptions())
    files, leaks = remove_leaks(scan.files)
    skipped = [s.to_dict() for s in (*src.skipped, *scan.skipped, *leaks)]
    split = "test" if any(f.candidate.split == "test" for f in files) else "all"
    chosen = [f for f in files if split == "all" or f.candidate.split == "test"]
    if not chosen:
        raise InputError(f"no usable images to evaluate in {_name(data)!r}")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({f.candidate.label for f in chosen} - set(index))
    if unknown:
        raise InputError(
            f"DATA has class {unknown[0]!r}, which the model was not trained on; "
            f"its classes are: {', '.join(classes)}"
        )
    paths = [f.candidate.path for f in chosen]
    return paths, [index[f.candidate.label] for f in chosen], split, skipped


def _name(data) -> str:
    return os.fspath(data) if isinstance(data, str | os.PathLike) else type(data).__name__
