"""Predicting on image files: expand inputs, batch them, report unreadable files per file.

A :class:`Predictor` turns images into class probabilities whatever holds the model: a
run directory (the trained torch model), or a file written by ``transferkit export``
(ONNX through onnxruntime, or TorchScript) with its sidecar JSON. Both share one
preprocessing path (``create_transform`` from the backbone's own ``data_config``, as
the run recorded it), so an exported model sees exactly the pixels the run's model saw.

Why per-file failures instead of an exception: a folder of thousands of photos with one
truncated JPEG should give thousands of predictions and one line saying which file
failed and why, never a crash that loses the rest.

Example:
    >>> predictor = load_predictor("runs/cats")                      # doctest: +SKIP
    >>> result = predictor.predict(["photos/", "extra/*.jpg"], top_k=3)  # doctest: +SKIP
    >>> [(p.path, p.label) for p in result.predictions]              # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import IMAGE_EXTENSIONS, create_transform, open_image
from .data.copies import side_for
from .data.images import decode_copy, extension_problem, special_file, working_copy
from .data.scanning import litter_reason
from .errors import InputError, MissingDependencyError
from .runs import file_sha256
from .trust.state import NOT_RECORDED

SIDECAR_SUFFIX = ".json"
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pts", ".torchscript", ".ts")
_GLOB_CHARS = frozenset("*?[")

LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Failure:
    """An input that could not be predicted, and why (one line)."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Prediction:
    """One image's predicted class, its probability, the top-k classes, and how far
    to trust it.

    Attributes:
        path: the file as found (as given, or joined to the folder it was found in).
        label: the most probable class.
        confidence: that class's (calibrated) probability.
        top_k: ``(class, probability)`` pairs, most probable first; ``top_k[0]`` is
            ``(label, confidence)``.
        unknown: the image looks unlike the training images (its ``ood_score`` is
            above the run's threshold); None when the model cannot tell (see
            :attr:`PredictResult.notes`).
        ood_score: how unlike the training images it is (higher: more unusual).
        prediction_set: the classes the model cannot rule out at the run's coverage
            (split conformal), most probable first; None when unknown to the model.
    """

    path: str
    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    unknown: bool | None = None
    ood_score: float | None = None
    prediction_set: list[str] | None = None

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "prediction": self.label,
            "confidence": self.confidence,
            "unknown": self.unknown,
            "ood_score": self.ood_score,
            "prediction_set": self.prediction_set,
            "top_k": [{"class": c, "probability": p} for c, p in self.top_k],
        }


@dataclass
class PredictResult:
    """Predictions for every readable input and a failure for every other one.

    ``trust``: the settings the trust fields were computed with (``unknown_rate``,
    ``ood_threshold``, ``coverage``, ``conformal_quantile``); ``notes``: why a trust
    field is null, when one is."""

    predictions: list[Prediction] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    trust: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "predictions": [p.to_dict() for p in self.predictions],
            "failures": [f.to_dict() for f in self.failures],
            "trust": dict(self.trust),
            "notes": list(self.notes),
        }


@dataclass
class Predictor:
    """Images in, class probabilities out, for any model source. See the module docstring.

    Attributes:
        classes: class names, in the model's output order.
        transform: PIL image -> normalised tensor, the run's evaluation transform.
        logits_fn: ``(B, C, H, W)`` float32 array -> ``(B, K)`` logits (``(B, 1)`` binary).
        binary: one logit with a sigmoid (two classes) rather than K with a softmax.
        source: what the predictions come from, for messages ("run runs/cats", ...).
        batch_size: images per forward pass.
        temperature: the calibration temperature the logits are already divided by
            (1.0: uncalibrated); recorded so the uncalibrated probabilities can be
            recovered (``transferkit.calibration.rescale(p, 1 / temperature)``).
        outputs_fn: like ``logits_fn`` but ``(logits, pooled features)`` from one
            forward pass (a torch model; None for exported ones).
        trust: the run's OOD and prediction-set data (``transferkit.trust``), or None.
        trust_notes: why a trust field is null, when one is.
    """

    classes: list[str]
    transform: Callable
    logits_fn: LogitsFn
    binary: bool
    source: str
    batch_size: int = 64
    temperature: float = 1.0
    outputs_fn: Callable | None = None
    trust: object = None
    trust_notes: list[str] = field(default_factory=list)

    def with_trust_settings(self, unknown_rate=None, coverage=None) -> Predictor:
        """The same predictor with the run's ``unknown_rate`` or ``coverage`` replaced
        (None: keep); the threshold and quantile are recomputed from the run's
        held-out scores, no refit. An :class:`InputError` for a bad value, or when
        the model has no trust data to recompute them from."""
        import dataclasses

        if unknown_rate is None and coverage is None:
            return self
        if self.trust is None:
            raise InputError(
                f"--unknown-rate/--coverage: {self.source} has no held-out scores to choose "
                f"them on ({'; '.join(self.trust_notes)}); leave them out"
            )
        return dataclasses.replace(self, trust=self.trust.with_settings(unknown_rate, coverage))

    @property
    def channels(self) -> int:
        return int(getattr(self.transform, "channels", 3))

    @property
    def side(self) -> int | None:
        """The working-copy side of the transform: a large image is seen through its
        working copy, exactly as the run's loaders saw it (``data/copies.py``)."""
        return side_for(self.transform)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(B, K) probabilities from raw logits, with the head's own rule."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.binary:
            p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    @classmethod
    def for_model(cls, model, classes, preprocessing: dict, batch_size: int = 64) -> Predictor:
        """A predictor over a trained torch ``TransferModel`` (where it is: its device),
        with the evaluation transform of ``preprocessing`` (``data_config`` and
        ``image_size``, as a run records them)."""
        import torch

        from .compute import nhwc_input

        model.eval()
        device = next(model.parameters()).device

        def logits_fn(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(nhwc_input(torch.from_numpy(x).to(device))).float().cpu().numpy()

        def outputs_fn(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                inputs = nhwc_input(torch.from_numpy(x).to(device))
                logits, pooled = model.logits_and_features(inputs)
                return logits.float().cpu().numpy(), pooled.float().cpu().numpy()

        trust = getattr(model, "trust", None)
        return cls(
            classes=list(classes),
            transform=transform_from(preprocessing),
            logits_fn=logits_fn,
            binary=bool(model.head.binary),
            source="fitted model",
            batch_size=batch_size,
            temperature=float(getattr(model.head, "temperature", 1.0)),
            outputs_fn=outputs_fn,
            trust=trust,
            trust_notes=[] if trust is not None else [NOT_RECORDED],
        )

    def predict_proba(self, images: Sequence) -> np.ndarray:
        """(N, K) probabilities for image paths, PIL images or HxW[xC] uint8 arrays;
        an :class:`InputError` naming the first one that cannot be read."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [
                self._pixels(as_image(item, self.channels, self.side))
                for item in images[start : start + self.batch_size]
            ]
            chunks.append(self._batch_outputs(batch)[0])
        return self._joined(chunks)

    def _pixels(self, image) -> np.ndarray:
        """A PIL image as the model's float32 input (the run's evaluation transform)."""
        return np.asarray(self.transform(image), dtype=np.float32)

    def _batch_outputs(self, pixels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and (when the model can give them) OOD scores of a batch,
        from one forward pass."""
        x = np.stack(pixels)
        if self.trust is None or self.outputs_fn is None:
            logits = self.logits_fn(x)
            scores = self.trust.scores(logits, None) if self.trust is not None else None
            return self.probabilities(logits), scores
        logits, features = self.outputs_fn(x)
        return self.probabilities(logits), self.trust.scores(logits, features)

    def _joined(self, chunks: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))

    def predict_proba_files(
        self, paths: Sequence[str]
    ) -> tuple[list[str], np.ndarray, list[Failure]]:
        """Probabilities of the files that could be read; a failure for each other one.

        Returns:
            ``(paths predicted, (N, K) probabilities in that order, failures)``.
        """
        done, probs, _, failures = self.score_files(paths)
        return done, probs, failures

    def score_files(
        self, paths: Sequence[str]
    ) -> tuple[list[str], np.ndarray, np.ndarray | None, list[Failure]]:
        """:meth:`predict_proba_files` and the OOD scores of the same files (None when
        the model cannot give them: see ``trust_notes``)."""
        done: list[str] = []
        chunks: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        failures: list[Failure] = []
        for start in range(0, len(paths), self.batch_size):
            tensors = []
            for path in paths[start : start + self.batch_size]:
                try:
                    image = open_image(path, channels=self.channels, side=self.side)
                    tensors.append(self._pixels(image))
                except InputError as exc:
                    failures.append(Failure(path, _reason(path, exc)))
                    continue
                done.append(path)
            if tensors:
                probs, ood = self._batch_outputs(tensors)
                chunks.append(probs)
                if ood is not None:
                    scores.append(ood)
        ood_all = np.concatenate(scores) if scores and len(scores) == len(chunks) else None
        return done, self._joined(chunks), ood_all, failures

    def predict(self, inputs: Sequence[str | os.PathLike], top_k: int = 1) -> PredictResult:
        """Predict every image that ``inputs`` (files, folders, globs) name.

        Args:
            inputs: files, folders (searched recursively for image files) and glob
                patterns (``**`` recurses).
            top_k: how many classes to list per image (clipped to the class count).
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top-k must be a positive integer, got {top_k!r}")
        entries = _expand(inputs)
        paths = [e for e in entries if isinstance(e, str)]
        done, probs, ood, unreadable = self.score_files(paths)
        # Failures in the order the inputs named them, wherever they were found out.
        at = {e: i for i, e in enumerate(entries) if isinstance(e, str)}
        found = [(i, e) for i, e in enumerate(entries) if isinstance(e, Failure)]
        found += [(at[f.path], f) for f in unreadable]
        failures = [f for _, f in sorted(found, key=lambda pair: pair[0])]
        k = min(top_k, len(self.classes))
        # Stable sort of -p: ties keep class order, like arg-max (see reports.metrics).
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        predictions = [
            Prediction(
                path,
                self.classes[int(top[0])],
                float(row[top[0]]),
                [(self.classes[int(j)], float(row[j])) for j in top],
            )
            for path, row, top in zip(done, probs, order, strict=True)
        ]
        settings, notes = self._add_trust(predictions, probs, ood)
        return PredictResult(predictions, failures, settings, notes)

    def _add_trust(self, predictions: list[Prediction], probs, ood) -> tuple[dict, list[str]]:
        """Fill each prediction's ``unknown``, ``ood_score`` and ``prediction_set``
        where the model can tell; returns the settings used and why a field is null."""
        from .trust.conformal import prediction_sets

        notes = list(self.trust_notes)
        if self.trust is None:
            return {}, notes
        settings = self.trust.summary()
        settings = {k: settings[k] for k in ("ood_method", "unknown_rate", "ood_threshold")} | {
            "coverage": self.trust.coverage,
            "conformal_quantile": settings["conformal_quantile"],
        }
        threshold, quantile = self.trust.threshold, self.trust.quantile
        notes += self.trust.notes()
        sets = prediction_sets(probs, quantile) if quantile is not None else None
        for i, p in enumerate(predictions):
            if ood is not None:
                p.ood_score = float(ood[i])
                p.unknown = bool(ood[i] > threshold) if threshold is not None else None
            if sets is not None:
                p.prediction_set = [self.classes[j] for j in sets[i]]
        return settings, notes


def as_image(item, channels: int, side: int | None = None):
    """A PIL image in the model's colour mode from a path, a PIL image or an array;
    through its working copy when larger than ``side``, as a file would be."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        return open_image(item, channels=channels, side=side)
    if isinstance(item, np.ndarray):
        item = Image.fromarray(item)
    if isinstance(item, Image.Image):
        if side is not None and min(item.size) > side:
            return decode_copy(working_copy(item, side), "image", channels)
        return item.convert("L" if channels == 1 else "RGB")
    raise InputError(f"cannot predict on a {type(item).__name__}: give paths, PIL images or arrays")


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[str], list[Failure]]:
    """Files to predict, in order and without repeats, and the inputs that named nothing.

    A folder is searched recursively for files with an image extension; other files in
    it are reported (hidden files and OS litter such as ``.DS_Store`` are passed over
    silently). A name that does not exist but holds ``*``, ``?`` or ``[`` is a glob
    pattern. A file named directly is always tried, whatever its extension.

    Example:
        >>> expand_inputs(["missing.png"])
        ([], [Failure(path='missing.png', reason='file not found')])
    """
    entries = _expand(inputs)
    return (
        [e for e in entries if isinstance(e, str)],
        [e for e in entries if isinstance(e, Failure)],
    )


def _expand(inputs: Iterable[str | os.PathLike]) -> list[str | Failure]:
    """Files and failures in the order the inputs name them, repeated files dropped."""
    entries: list[str | Failure] = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            _walk_folder(item, entries)
        elif os.path.exists(item):
            entries.append(item)
        elif _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                entries.append(Failure(item, "no file matches this pattern"))
            for match in matches:
                _walk_folder(match, entries) if os.path.isdir(match) else entries.append(match)
        else:
            entries.append(Failure(item, "file not found"))
    seen: set[str] = set()
    unique: list[str | Failure] = []
    for e in entries:
        key = os.path.normcase(os.path.abspath(e)) if isinstance(e, str) else None
        if key is None or key not in seen:
            unique.append(e)
            if key is not None:
                seen.add(key)
    return unique


def _walk_folder(folder: str, entries: list[str | Failure]) -> None:
    found_any = False
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if litter_reason(d, is_dir=True) is None)
        for name in sorted(files):
            if litter_reason(name) is not None:
                continue
            path = os.path.join(root, name)
            problem = extension_problem(name)
            if problem is None and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                entries.append(path)
                found_any = True
            else:
                entries.append(Failure(path, problem or "not an image"))
    if not found_any:
        entries.append(Failure(folder, "folder holds no image files"))


def _reason(path: str, exc: Exception) -> str:
    """The error's message without the file name ``open_image`` puts in front."""
    text = str(exc)
    prefix = f"{os.fsdecode(path)}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


# ------------------------------------------------------------------------- loading


def load_predictor(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    backbone=None,
) -> Predictor:
    """A predictor for a run directory, an exported ``.onnx`` or a TorchScript file.

    Args:
        path: a run directory (``fit --out``), or a file from ``transferkit export``
            with its sidecar ``FILE.json`` beside it.
        device: ``cpu``, ``cuda`` or ``auto`` for a run directory or TorchScript file
            (ONNX runs on onnxruntime's CPU provider).
        batch_size: images per forward pass.
        backbone: the backbone module, for a run trained on a Python module.

    Raises:
        InputError: the path is none of these, or its weights, file or sidecar fail
            their checks (altered, truncated, missing).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    p = Path(path)
    if p.is_dir():
        return _run_predictor(p, device, batch_size, backbone)
    if not p.exists():
        raise InputError(f"model not found: {str(p)!r} does not exist")
    special = special_file(p)
    if special is not None:  # reading a named pipe would wait for a writer forever
        raise InputError(f"model {str(p)!r} is {special}, not a file")
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return _onnx_predictor(p, batch_size)
    if suffix in TORCHSCRIPT_SUFFIXES:
        return _torchscript_predictor(p, device, batch_size)
    raise InputError(
        f"{str(p)!r} is not a run directory, an .onnx file or a TorchScript file "
        f"({', '.join(TORCHSCRIPT_SUFFIXES)})"
    )


def sidecar_path(model_file: str | os.PathLike) -> Path:
    """Where the sidecar of an exported model lives: ``FILE`` + ``.json``."""
    p = Path(model_file)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_sidecar(model_file: str | os.PathLike) -> dict:
    """The exported model's sidecar, after checking the model file against its digest.

    Why the digest: an exported file that was truncated or altered after export must be
    refused, not run; a model that loads but predicts wrongly is the worst outcome.
    """
    model_file = Path(model_file)
    side = sidecar_path(model_file)
    if not side.is_file():
        raise InputError(
            f"{str(model_file)!r} has no sidecar {side.name!r} beside it (classes and "
            "preprocessing); export the run again with `transferkit export`"
        )
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        classes, binary = list(meta["classes"]), bool(meta["binary"])
        if "input_size" not in meta["preprocessing"]["data_config"]:
            raise KeyError("preprocessing.data_config.input_size")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{str(side)!r} is not a valid transferkit sidecar: {exc}") from None
    if len(classes) < 2 or (binary and len(classes) != 2):
        raise InputError(f"{str(side)!r} lists {len(classes)} classes; it is not valid")
    if file_sha256(model_file) != meta.get("sha256"):
        raise InputError(
            f"{str(model_file)!r} does not match the digest in {side.name}: the file was "
            "truncated or altered; refusing to run a model that is not the one exported"
        )
    return meta


def transform_from(preprocessing: dict):
    """The evaluation transform recorded in a run's config or an export's sidecar."""
    data_config = dict(preprocessing["data_config"])
    data_config["input_size"] = tuple(data_config["input_size"])
    return create_transform(data_config, train=False, image_size=preprocessing.get("image_size"))


def _run_predictor(run: Path, device: str, batch_size: int, backbone) -> Predictor:
    from .compute import resolve_device
    from .runs import load_run

    loaded = load_run(run, backbone=backbone)
    model = loaded.model.to(resolve_device(device))
    predictor = Predictor.for_model(
        model, loaded.classes, loaded.config["preprocessing"], batch_size
    )
    predictor.source = f"run {run}"
    return predictor


def _onnx_predictor(path: Path, batch_size: int) -> Predictor:
    meta = read_sidecar(path)
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError(
            "running an .onnx model needs onnxruntime: pip install 'transferkit[export]'"
        ) from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise InputError(f"cannot load {str(path)!r}: {str(exc).splitlines()[0]}") from None
    input_name = meta.get("input", {}).get("name") or session.get_inputs()[0].name

    def logits_fn(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return _from_sidecar(meta, logits_fn, f"onnx {path}", batch_size)


def _torchscript_predictor(path: Path, device: str, batch_size: int) -> Predictor:
    import torch

    from .compute import resolve_device

    meta = read_sidecar(path)
    dev = resolve_device(device)
    try:
        module = _jit_load(path, dev)
    except Exception as exc:
        raise InputError(f"cannot load {str(path)!r}: {str(exc).splitlines()[0]}") from None

    def logits_fn(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    return _from_sidecar(meta, logits_fn, f"torchscript {path}", batch_size)


def _jit_load(path: Path, device):
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch.jit is deprecated upstream but TorchScript is still what many serving
        # stacks load; the warning is not the user's to act on.
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    return module.eval()


def _from_sidecar(meta: dict, logits_fn: LogitsFn, source: str, batch_size: int) -> Predictor:
    trust, notes = _sidecar_trust(meta)
    return Predictor(
        classes=[str(c) for c in meta["classes"]],
        transform=transform_from(meta["preprocessing"]),
        logits_fn=logits_fn,
        binary=bool(meta["binary"]),
        source=source,
        batch_size=batch_size,
        temperature=float(meta.get("temperature", 1.0)),
        trust=trust,
        trust_notes=notes,
    )


EXPORT_OOD_NOTE = (
    "ood_score and unknown need the image's features, which an exported model does not "
    "give (it gives logits): predict with the run directory for them"
)


def _sidecar_trust(meta: dict):
    """The prediction-set data a sidecar carries (the OOD score's statistics stay in
    the run), and why a trust field will be null."""
    from .trust.ood import FEATURE_METHODS
    from .trust.state import trust_from_json

    record = meta.get("trust")
    if not isinstance(record, dict):
        return None, [NOT_RECORDED]
    try:
        trust = trust_from_json(record)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the sidecar's trust record is not valid ({exc}); export again") from None
    return trust, [EXPORT_OOD_NOTE] if trust.method in FEATURE_METHODS else []
