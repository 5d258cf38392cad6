"""Exporting a trained model: ONNX (checked with onnxruntime) or TorchScript, plus a sidecar.

The exported graph maps a ``(batch, C, H, W)`` float32 image batch, already preprocessed,
to raw logits; the batch dimension is dynamic. Beside ``FILE`` goes ``FILE.json`` with
what a consumer needs and cannot read from the graph: the class names, how to turn
logits into probabilities (softmax, or a sigmoid for a binary head's single logit), the
preprocessing (which comes from the backbone's own config), and the SHA-256 of ``FILE``
so a damaged file is refused on load.

Why verify right after exporting: exporters trace one example, and a graph can quietly
bake in that example's batch size or drop an op. The export is run on fresh random
batches of two sizes (2 and 3) and compared with the torch model; only when the largest
difference is within bounds is the file moved into place. A failed check leaves no file.

Example:
    >>> result = export_run("runs/cats", "cats.onnx")  # ONNX, from the suffix  # doctest: +SKIP
    >>> result.max_abs_diff < result.bound                             # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .atomic import atomic_write_text
from .errors import InputError, MissingDependencyError, TransferkitError
from .predict import ONNX_SUFFIXES, TORCHSCRIPT_SUFFIXES, sidecar_path, transform_from
from .runs import file_sha256, load_run

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "image", "logits"
VERIFY_BATCH_SIZES = (2, 3)


class ExportError(TransferkitError):
    """The exported model does not reproduce the torch model; nothing was written."""


@dataclass
class ExportResult:
    """What was written and how well it matches the torch model.

    Attributes:
        path: the exported model file.
        sidecar: its ``FILE.json``.
        format: ``"onnx"`` or ``"torchscript"``.
        max_abs_diff: largest |exported - torch| over the logits of the check batches.
        bound: the largest difference accepted (``tolerance * max(1, max |logit|)``).
        batch_sizes: the batch sizes checked (more than one: the batch is dynamic).
        checked_with: the runtime that ran the exported file.
    """

    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float
    bound: float
    batch_sizes: tuple[int, ...]
    checked_with: str

    def to_dict(self) -> dict:
        out = asdict(self)
        out["path"], out["sidecar"] = str(self.path), str(self.sidecar)
        out["batch_sizes"] = list(self.batch_sizes)
        return out


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    backbone: nn.Module | None = None,
) -> ExportResult:
    """Export the model of a run directory (weights digest checked on load).

    Args:
        run_dir: a run written by ``fit``.
        out: the file to write; its sidecar is ``out + ".json"``.
        format: ``"onnx"`` or ``"torchscript"``; ``None``: from the suffix of ``out``
            (see :func:`export_format`).
        opset: ONNX opset version.
        tolerance: accepted logit difference, scaled by the logits' magnitude.
        backbone: the backbone module, for a run trained on a Python module.

    Raises:
        InputError: bad format or output path, or a run that fails to load.
        MissingDependencyError: ONNX asked for, and onnx or onnxruntime not installed.
        ExportError: the exported model's logits differ from torch's beyond the bound.
    """
    format = _ready_format(out, format)
    loaded = load_run(run_dir, backbone=backbone)
    source = {"run": str(Path(run_dir)), "weights_sha256": loaded.config.get("weights_sha256")}
    return export_model(
        loaded.model,
        out,
        format=format,
        classes=loaded.classes,
        preprocessing=loaded.config["preprocessing"],
        source=source,
        opset=opset,
        tolerance=tolerance,
    )


def export_model(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    classes: Sequence[str],
    preprocessing: Mapping,
    source: Mapping | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export a ``TransferModel`` (image batch -> logits) and write its sidecar.

    Args:
        model: the model; exported on the CPU in eval mode, then put back as it was.
        out: the file to write.
        format: ``"onnx"`` or ``"torchscript"``; ``None``: from the suffix of ``out``.
        classes: class names in output order.
        preprocessing: ``{"data_config": ..., "image_size": ...}`` as in a run config.
        source: where the model came from, recorded in the sidecar.
        opset: ONNX opset version.
        tolerance: see :func:`export_run`.
    """
    format = _ready_format(out, format)
    out = _check_out(out)
    transform = transform_from(dict(preprocessing))
    interface = _Interface(
        classes=classes,
        binary=bool(getattr(getattr(model, "head", None), "binary", len(classes) == 2)),
        shape=tuple(int(v) for v in transform.config["input_size"]),
    )
    diff, bound, runtime = _export_checked(model, out, format, interface.shape, opset, tolerance)
    result = ExportResult(out, sidecar_path(out), format, diff, bound, VERIFY_BATCH_SIZES, runtime)
    meta = _sidecar(result, interface, _preprocessing(preprocessing, transform), source, opset)
    # the graph's logits are already divided by the head's calibration temperature
    meta["temperature"] = float(getattr(getattr(model, "head", None), "temperature", 1.0))
    # the prediction sets' held-out scores (they need only the probabilities); the OOD
    # statistics stay in the run: the exported graph gives logits, not features
    trust = getattr(model, "trust", None)
    meta["trust"] = trust.to_json() if trust is not None else None
    atomic_write_text(result.sidecar, json.dumps(meta, indent=2))
    return result


def _export_checked(
    model: nn.Module,
    out: Path,
    format: str,
    shape: tuple[int, ...],
    opset: int,
    tolerance: float,
) -> tuple[float, float, str]:
    """Export to a temp file, run it on the check batches and move it to ``out`` only if
    its logits match torch's: (largest difference, its bound, the runtime that ran it)."""
    batches = _check_batches(shape)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    with _on_cpu_in_eval(model):
        with torch.no_grad():
            expected = [model(x).float().numpy() for x in batches]
        try:
            if format == "onnx":
                _write_onnx(model, batches[0], tmp, opset)
                actual, runtime = _run_onnx(tmp, batches)
            else:
                _write_torchscript(model, batches[0], tmp)
                actual, runtime = _run_torchscript(tmp, batches)
            diff, bound = _compare(actual, expected, tolerance, format)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return diff, bound, runtime


def export_format(out: str | os.PathLike, format: str | None = None) -> str:
    """The format to export to: ``format`` if given, else the one the suffix of ``out``
    names, as ``predict`` reads it (``.onnx``: ONNX; ``.pt``, ``.pts``, ``.torchscript``,
    ``.ts``: TorchScript). An :class:`InputError` for anything else."""
    if format is not None and format not in FORMATS:
        raise InputError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    suffix = Path(out).suffix.lower()
    named = {
        **dict.fromkeys(ONNX_SUFFIXES, "onnx"),
        **dict.fromkeys(TORCHSCRIPT_SUFFIXES, "torchscript"),
    }
    if format is not None and named.get(suffix, format) != format:
        raise InputError(
            f"--format {format} does not fit --out {os.fspath(out)!r}: predict would read a "
            f"{suffix} file as {named[suffix]}; name the file with the format's suffix"
        )
    if format is not None:
        return format
    if suffix in named:
        return named[suffix]
    raise InputError(
        f"cannot tell the export format from --out {os.fspath(out)!r}: give it the suffix "
        f"{', '.join(ONNX_SUFFIXES)} (onnx) or {', '.join(TORCHSCRIPT_SUFFIXES)} "
        f"(torchscript), or name the format ({' or '.join(FORMATS)})"
    )


def _ready_format(out: str | os.PathLike, format: str | None) -> str:
    """The export format, after checking that what it needs is installed."""
    format = export_format(out, format)
    if format == "onnx":
        for package in ("onnx", "onnxruntime"):  # the exporter, and the check after it
            try:
                importlib.import_module(package)
            except ImportError:
                raise MissingDependencyError(
                    f"exporting to ONNX needs {package}, which is not installed: "
                    "pip install 'transferkit[export]'"
                ) from None
    return format


def _check_out(out: str | os.PathLike) -> Path:
    path = Path(out)
    if path.is_dir():
        raise InputError(f"--out {str(path)!r} is a folder; give the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder of {str(path)!r}: {exc.strerror}") from None
    return path


def _check_batches(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Random preprocessed-looking batches; seeded so an export is reproducible."""
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, *shape, generator=gen) for n in VERIFY_BATCH_SIZES]


@contextlib.contextmanager
def _on_cpu_in_eval(model: nn.Module) -> Iterator[None]:
    """Run the export with the model on the CPU in eval mode, then restore both."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    training = model.training
    model.cpu().eval()
    try:
        yield
    finally:
        model.to(device).train(training)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence upstream deprecation notices and tracer warnings during export.

    Why: the legacy exporter and ``torch.jit`` warn that they are deprecated (the
    replacements need packages we do not depend on), and tracer warnings say a value
    might be baked in; the check on two batch sizes is what tells us whether one was,
    so the warnings are noise to the user.
    """
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning):
            warnings.simplefilter("ignore", category)
        yield


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    try:
        with _quiet():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                # The dynamo exporter needs onnxscript, which we do not depend on; the
                # TorchScript-based one is verified like any other.
                dynamo=False,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {str(exc).splitlines()[0]}") from exc


def _run_onnx(path: Path, batches: list[torch.Tensor]) -> tuple[list[np.ndarray], str]:
    import onnx  # both installed: _ready_format checked
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0] for x in batches]
    return outputs, f"onnxruntime {ort.__version__}"


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path))
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {str(exc).splitlines()[0]}") from exc


def _run_torchscript(path: Path, batches: list[torch.Tensor]) -> tuple[list[np.ndarray], str]:
    from .predict import _jit_load

    module = _jit_load(path, torch.device("cpu"))
    with torch.no_grad():
        outputs = [module(x).float().numpy() for x in batches]
    return outputs, f"torch.jit {torch.__version__}"


def _compare(
    actual: list[np.ndarray], expected: list[np.ndarray], tolerance: float, format: str
) -> tuple[float, float]:
    """Largest logit difference and the bound it must meet.

    Why scaled: float32 rounding grows with the size of the numbers, so the bound is
    ``tolerance`` for logits up to 1 and ``tolerance * max |logit|`` beyond.
    """
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape:
            raise ExportError(
                f"the {format} export returned shape {a.shape} for a batch of {e.shape[0]} "
                f"(torch: {e.shape}); the batch size was not exported as dynamic"
            )
    diff = max(float(np.abs(a - e).max()) for a, e in zip(actual, expected, strict=True))
    bound = float(tolerance) * max(1.0, max(float(np.abs(e).max()) for e in expected))
    if not diff <= bound:  # NaN fails too
        raise ExportError(
            f"the {format} export disagrees with the torch model: max |difference| of the "
            f"logits is {diff:.3g}, above the bound {bound:.3g}; nothing was written"
        )
    return diff, bound


def _sidecar(
    result: ExportResult,
    interface: _Interface,
    preprocessing: dict,
    source: Mapping | None,
    opset: int,
) -> dict:
    """What a consumer of the exported file needs and cannot read from the graph."""
    meta = {
        "format": result.format,
        "file": result.path.name,
        "sha256": file_sha256(result.path),
        "transferkit_version": __version__,
        **interface.to_dict(),
        "preprocessing": preprocessing,
        "source": dict(source or {}),
    }
    if result.format == "onnx":
        meta["opset"] = opset
    meta["verification"] = {
        "runtime": result.checked_with,
        "batch_sizes": list(result.batch_sizes),
        "max_abs_diff": result.max_abs_diff,
        "bound": result.bound,
    }
    return meta


@dataclass(frozen=True)
class _Interface:
    """What the exported graph takes and gives, as the sidecar states it.

    Attributes:
        classes: class names in output order.
        binary: a binary head's single logit (a sigmoid), not one logit per class.
        shape: one preprocessed image, ``(C, H, W)``.
    """

    classes: Sequence[str]
    binary: bool
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        """The sidecar's ``classes``, ``binary``, ``input`` and ``output``."""
        return {
            "classes": [str(c) for c in self.classes],
            "binary": self.binary,
            "input": {
                "name": INPUT_NAME,
                "shape": ["batch", *self.shape],
                "dtype": "float32",
                "layout": "NCHW, preprocessed as in 'preprocessing'",
            },
            "output": {
                "name": OUTPUT_NAME,
                "shape": ["batch", 1 if self.binary else len(self.classes)],
                "probabilities": (
                    f"sigmoid(logit) is the probability of {self.classes[1]!r}"
                    if self.binary
                    else "softmax over the last axis, in the order of 'classes'"
                ),
            },
        }


def _preprocessing(preprocessing: Mapping, transform) -> dict:
    """The sidecar's ``preprocessing``: as configured, and as the transform resolved it."""
    return {
        "data_config": dict(preprocessing["data_config"]),
        "image_size": preprocessing.get("image_size"),
        "resolved": {k: v for k, v in transform.config.items() if k not in ("augment",)},
    }
