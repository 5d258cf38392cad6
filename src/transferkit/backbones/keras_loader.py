"""Keras 3 models as backbones (optional extra ``transferkit[keras]``).

The workflow transferkit implements was taught with Keras: ``keras.applications``
models with ``include_top=False``, a trained ``model.hdf5`` loaded with ``load_model``
and cut at ``get_layer('mixed7')``. Keras 3 runs on a PyTorch backend, where a Keras
model is a ``torch.nn.Module`` whose weights are torch Parameters, so such a model can
be trained by transferkit's engine directly. This module turns specs into Keras
models; :mod:`.keras_backbone` wraps a model as a :class:`~.base.Backbone`.

Specs (options after commas, e.g. ``keras:InceptionV3,size=150``):

- ``keras:NAME``: ``keras.applications.NAME(include_top=False)``; weights from
  ``--weights PATH`` (a Keras weights file), ``--weights none``, or ``imagenet``
  (Keras's cache, else a download).
- ``PATH.keras`` / ``PATH.h5`` / ``PATH.hdf5``: a saved Keras model (``load_model``).
- options: ``size=N`` or ``size=HxW`` (input size), ``preprocess=MODE`` (one of
  :data:`PREPROCESS_MODES`).

Preprocessing, the model family's own, is expressed as the backbone's ``data_config``
mean/std on the [0, 1] scale transferkit's transforms produce, so it is exact and
recorded like any other backbone's; only ``caffe``'s RGB->BGR channel flip happens
inside the module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, MissingDependencyError, TransferkitError, WeightsUnavailableError
from ..errors import did_you_mean as _did_you_mean
from .keras_backbone import KerasBackbone, KerasOrigin
from .keras_preprocess import (
    APPLICATIONS,
    PREPROCESS_MODES,
    check_preprocess,
    infer_preprocess,
    keras_data_config,
)
from .loader import Loader, is_spec_text

__all__ = [
    "APPLICATIONS",
    "PREPROCESS_MODES",
    "create_keras_backbone",
    "import_keras",
    "is_keras_model",
    "is_keras_spec",
    "keras_data_config",
    "rebuild_keras_backbone",
    "recut_keras_backbone",
]

log = logging.getLogger(__name__)

KERAS_PREFIX = "keras:"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
INSTALL_HINT = "pip install 'transferkit[keras]'"

# ------------------------------------------------------------------------- import


def import_keras(what: str = "a Keras backbone"):
    """Import Keras 3 on the torch backend, or say exactly what to do.

    The backend is chosen when Keras is first imported (``KERAS_BACKEND``), so it is
    set here before the import; a Keras already imported with another backend cannot
    be switched and is refused with instructions.
    """
    keras = sys.modules.get("keras")
    if keras is None:
        if importlib.util.find_spec("keras") is None:
            raise MissingDependencyError(
                f"{what} needs Keras 3 (torch backend), which is not installed: {INSTALL_HINT}"
            )
        if os.environ.get("KERAS_BACKEND", "torch") != "torch":
            log.info("KERAS_BACKEND=%s replaced by torch", os.environ["KERAS_BACKEND"])
        os.environ["KERAS_BACKEND"] = "torch"
        try:
            import keras
        except ImportError as exc:
            raise MissingDependencyError(
                f"{what} needs Keras 3, which failed to import ({exc}): {INSTALL_HINT}"
            ) from None
    version = str(getattr(keras, "__version__", "0"))
    if int(version.split(".")[0] or 0) < 3:
        raise MissingDependencyError(f"{what} needs Keras 3, found Keras {version}: {INSTALL_HINT}")
    backend = keras.backend.backend()
    if backend != "torch":
        raise TransferkitError(
            f"Keras was already imported with the {backend!r} backend; {what} needs the "
            "torch backend. Set KERAS_BACKEND=torch before Keras is first imported (in the "
            "shell, or os.environ at the very top of your script), or import "
            "transferkit's Keras support before Keras"
        )
    return keras


def is_keras_spec(spec: str) -> bool:
    """Whether a string spec is for this loader (no Keras import needed)."""
    if spec.startswith(KERAS_PREFIX):
        return True
    path, _ = _split_options(spec)
    return Path(path).suffix.lower() in KERAS_SUFFIXES


def is_keras_model(obj) -> bool:
    """A Keras model object or a Keras backbone (checked without importing Keras)."""
    if type(obj).__name__ == "KerasBackbone":
        return True
    return type(obj).__module__.startswith("keras.") and hasattr(obj, "get_layer")


# --------------------------------------------------------------------------- specs


@dataclass
class KerasSpec:
    """A parsed spec: ``target`` is an application name or a file path."""

    text: str
    target: str
    kind: str  # "application" or "file"
    size: tuple[int, int] | None = None
    preprocess: str | None = None


def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    if Path(spec.removeprefix(KERAS_PREFIX)).is_file() or "," not in spec:
        return spec, {}
    head, *opts = spec.split(",")
    options = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or key.strip() not in ("size", "preprocess"):
            raise InputError(
                f"bad option {opt!r} in backbone spec {spec!r}: options are size=N or "
                f"size=HxW, and preprocess={'|'.join(PREPROCESS_MODES)}"
            )
        options[key.strip()] = value.strip()
    return head, options


def parse_keras_spec(spec: str) -> KerasSpec:
    """``keras:NAME[,size=N][,preprocess=MODE]`` or ``PATH[,...]`` (see module doc)."""
    head, options = _split_options(spec)
    target = head.removeprefix(KERAS_PREFIX)
    is_file = Path(target).suffix.lower() in KERAS_SUFFIXES or Path(target).is_file()
    parsed = KerasSpec(spec, target, "file" if is_file else "application")
    if "size" in options:
        parsed.size = _parse_size(options["size"], spec)
    if "preprocess" in options:
        parsed.preprocess = check_preprocess(options["preprocess"])
    return parsed


def _parse_size(text: str, spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not match or int(match.group(1)) < 8:
        raise InputError(f"size={text!r} in {spec!r}: expected N or HxW pixels, at least 8")
    h = int(match.group(1))
    return h, int(match.group(2) or h)


# -------------------------------------------------------------------------- models


@contextlib.contextmanager
def fresh_names(keras):
    """Build with Keras's automatic-name counters at zero, then put them back.

    ``keras.applications`` names most layers automatically (``conv2d_94``...) from a
    process-wide counter, so a second InceptionV3 would get other names than the first:
    other cut names and weight keys. Counting from zero makes every build the same.
    """
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # a Keras without this internal: names just stay global
        yield
        return
    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", None)
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)


def resolve_application(name: str, keras) -> str:
    options = [n for n in dir(keras.applications) if n[:1].isupper()]
    exact = {n.lower(): n for n in options}
    if name.lower() in exact:
        return exact[name.lower()]
    raise InputError(
        f"unknown Keras application {name!r}{_did_you_mean(name, options)}"
        f" (keras.applications: {', '.join(options)})"
    )


def build_application(
    spec: KerasSpec, *, weights: str | Path | None, pretrained: bool
) -> tuple[object, str, str, tuple[int, int]]:
    """``keras.applications.NAME(include_top=False)``; returns (model, mode, origin,
    default input size).

    With ``size=`` the model is built for exactly that input, as
    ``input_shape=(H, W, 3)`` does; without it, for any size (``input_shape=(None, None,
    3)``), the family's default size being what transferkit feeds it unless told
    otherwise (``--image-size``)."""
    keras = import_keras(f"backbone {spec.text!r}")
    name = resolve_application(spec.target, keras)
    mode, default = APPLICATIONS.get(name, (None, 224))
    mode = spec.preprocess or mode
    if mode is None:
        raise InputError(
            f"transferkit does not know the preprocessing of keras:{name}; name it: "
            f"keras:{name},preprocess=MODE (MODE one of {', '.join(PREPROCESS_MODES)})"
        )
    h, w = spec.size or (default, default)
    fn = getattr(keras.applications, name)
    want_imagenet = weights is None and pretrained
    try:
        with fresh_names(keras), keras.device("cpu"):
            model = fn(
                include_top=False,
                weights="imagenet" if want_imagenet else None,
                input_shape=(h, w, 3) if spec.size else (None, None, 3),
            )
    except ValueError as exc:  # e.g. an input size the architecture cannot take
        raise InputError(f"keras:{name} at {h}x{w}: {_first_line(exc)}") from None
    except Exception as exc:
        if not want_imagenet:
            raise
        raise WeightsUnavailableError(
            f"ImageNet weights for keras:{name} are not in Keras's cache (~/.keras/models) "
            f"and could not be downloaded ({_first_line(exc)}): pass a local Keras weights "
            "file (--weights PATH, e.g. the *_notop.h5 file) or --weights none"
        ) from None
    origin = "imagenet" if want_imagenet else "random"
    if weights is not None:
        load_keras_weights(model, weights, f"keras:{name}")
        origin = f"file:{weights}"
    return model, mode, origin, (h, w)


def load_keras_weights(model, path: str | Path, what: str) -> None:
    """``model.load_weights(path)`` with a one-line error for a missing or unfit file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Keras weights file {str(path)!r} does not exist")
    try:
        model.load_weights(str(path))
    except ImportError:
        raise MissingDependencyError(f"reading {str(path)!r} needs h5py: {INSTALL_HINT}") from None
    except Exception as exc:
        raise InputError(
            f"cannot load Keras weights {str(path)!r} into {what}: {_first_line(exc)}"
        ) from None


def load_keras_file(spec: KerasSpec, *, weights: str | Path | None, pretrained: bool):
    """A saved Keras model (``.keras`` or legacy ``.h5``), as ``load_model`` gives it."""
    keras = import_keras(f"backbone {spec.text!r}")
    path = Path(spec.target)
    if not path.is_file():
        raise InputError(f"Keras model file {str(path)!r} does not exist")
    if path.suffix.lower() in (".h5", ".hdf5") and not _h5_has_model(path):
        raise InputError(
            f"{str(path)!r} holds Keras weights only, not a model: name the architecture, "
            f"e.g. --backbone keras:InceptionV3 --weights {path}"
        )
    try:
        model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except ImportError:
        raise MissingDependencyError(f"reading {str(path)!r} needs h5py: {INSTALL_HINT}") from None
    except Exception as exc:
        raise InputError(f"cannot load Keras model {str(path)!r}: {_first_line(exc)}") from None
    if not pretrained:  # same architecture, fresh initialisation
        model = model_from_config(json.loads(model.to_json()))
    if weights is not None:
        load_keras_weights(model, weights, str(path))
    return model


def _h5_has_model(path: Path) -> bool:
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError(f"reading {str(path)!r} needs h5py: {INSTALL_HINT}") from None
    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError as exc:
        raise InputError(f"{str(path)!r} is not a readable HDF5 file: {exc}") from None


def model_from_config(config: dict):
    """Rebuild a Keras model from ``json.loads(model.to_json())`` (random weights)."""
    keras = import_keras("rebuilding a Keras backbone")
    try:
        with fresh_names(keras), keras.device("cpu"):
            return keras.models.model_from_json(json.dumps(config))
    except Exception as exc:
        raise InputError(f"cannot rebuild the Keras model: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------ creation


@dataclass
class _Found:
    """A Keras model and what its spec says about it, before it is wrapped."""

    model: object
    name: str
    preprocess: str
    size: tuple[int, int] | None
    origin: KerasOrigin


def create_keras_backbone(
    spec,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    cut: str | None = None,
    preprocess: str | None = None,
    size: tuple[int, int] | None = None,
    name: str | None = None,
) -> KerasBackbone:
    """A :class:`~.keras_backbone.KerasBackbone` from a spec string or a Keras model.

    Args:
        spec: ``keras:NAME[,size=N][,preprocess=MODE]``, a ``.keras``/``.h5`` path
            (same options), a Keras model object (e.g. from ``load_model``), or a
            Keras backbone to re-cut below its cut (it keeps its spec and origin).
        weights: a Keras weights file to load (``model.load_weights``); for
            ``keras:NAME`` without it, ImageNet weights.
        pretrained: ``False`` gives random initialisation (``--weights none``).
        cut: a Keras layer name (``mixed7``, ``flatten_1``); default: the output.
        preprocess: overrides the spec's or the inferred preprocessing mode.
        size: input (H, W) for models whose input size is not fixed.
        name: a display name.

    Example:
        >>> bb = create_keras_backbone("keras:InceptionV3,size=150", pretrained=False,
        ...                            cut="mixed7")  # doctest: +SKIP
        >>> bb.keras_output_shape  # doctest: +SKIP
        (7, 7, 768)
    """
    if isinstance(spec, KerasBackbone):
        if cut is None or cut == spec.cut:
            return spec
        found = _from_backbone(spec, weights=weights, preprocess=preprocess)
    elif is_keras_model(spec):
        found = _from_model(spec, weights=weights, preprocess=preprocess)
    else:
        parsed = parse_keras_spec(str(spec))
        found = _from_spec(parsed, weights=weights, pretrained=pretrained, preprocess=preprocess)
    return KerasBackbone(
        found.model,
        keras=import_keras(),
        name=name or found.name,
        preprocess=check_preprocess(found.preprocess),
        size=size or found.size,
        cut=cut,
        origin=found.origin,
    )


def _from_backbone(backbone: KerasBackbone, *, weights, preprocess: str | None) -> _Found:
    """A Keras backbone to cut lower: its Keras sub-model holds every lower layer, and
    it is still the model its spec names, so spec and origin stay."""
    found = _from_model(
        backbone.keras_model, weights=weights, preprocess=preprocess or backbone.preprocess
    )
    found.name, found.size, found.origin = backbone.name, backbone.input_size[1:], backbone.origin
    return found


def _from_model(model, *, weights, preprocess: str | None) -> _Found:
    import_keras("a Keras model backbone")
    if weights is not None:
        load_keras_weights(model, weights, "the Keras model")
    mode = preprocess or infer_preprocess(model)
    return _Found(model, model.name, mode, None, KerasOrigin())


def _from_spec(parsed: KerasSpec, *, weights, pretrained: bool, preprocess: str | None) -> _Found:
    if parsed.kind == "application":
        model, mode, origin, default_size = build_application(
            parsed, weights=weights, pretrained=pretrained
        )
        name = resolve_application(parsed.target, import_keras())
        source = f"keras application ({origin})"
        return _Found(
            model,
            name,
            preprocess or mode,
            parsed.size or default_size,
            KerasOrigin("application", parsed.text, source, {"application": name}),
        )
    model = load_keras_file(parsed, weights=weights, pretrained=pretrained)
    path = Path(parsed.target)
    return _Found(
        model,
        path.stem,
        preprocess or parsed.preprocess or infer_preprocess(model),
        parsed.size,
        KerasOrigin(
            "file", parsed.text, f"keras file (file {path.name})", {"file": str(path.resolve())}
        ),
    )


def rebuild_keras_backbone(record: dict, module=None) -> KerasBackbone:
    """The backbone a run recorded (``describe()``), with random weights: the run's
    ``model.safetensors`` fills them. Files and in-memory models are rebuilt from the
    architecture stored in the record, so the original file is not needed."""
    info = record["keras"]
    size = tuple(info["input_size"])
    common = {"cut": record.get("cut"), "preprocess": info["preprocess"], "size": size}
    if module is not None:
        return create_keras_backbone(module, name=record.get("name"), **common)
    if info["kind"] == "application":
        return create_keras_backbone(record["spec"], pretrained=False, **common)
    if not info.get("model_config"):
        raise InputError(
            f"this run's Keras backbone {record.get('name')!r} has no recorded architecture; "
            "load it with load_run(path, backbone=<the same Keras model>)"
        )
    model = model_from_config(info["model_config"])
    bb = create_keras_backbone(model, name=record.get("name"), **common)
    bb.spec, bb.kind, bb.source = record["spec"], info["kind"], record.get("source", bb.source)
    bb._extra = {k: v for k, v in info.items() if k in ("file", "application")}
    return bb


def recut_keras_backbone(backbone: KerasBackbone, cut: str) -> KerasBackbone:
    """The same Keras backbone cut lower, at ``cut``: a Keras sub-model on the very same
    layers and weights (no copy; Keras models do not deep-copy). It keeps its spec and
    origin, so a run saved from it rebuilds as the original would. The given backbone
    stays usable, but only one of the two should be trained: they share weights."""
    return create_keras_backbone(backbone, cut=cut)


def _is_keras(spec: object) -> bool:
    return is_keras_model(spec) or (is_spec_text(spec) and is_keras_spec(spec))


def _create(spec, *, weights, cut, pretrained) -> KerasBackbone:
    return create_keras_backbone(spec, weights=weights, pretrained=pretrained, cut=cut)


KERAS_LOADER = Loader("keras", _is_keras, _create, rebuild_keras_backbone, recut_keras_backbone)
