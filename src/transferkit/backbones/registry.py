"""One table of backbone loaders, used to create, rebuild and re-cut backbones.

A spec is a built-in name, a timm name (optionally ``timm:NAME``), a path to a local
checkpoint, or a ``torch.nn.Module``; with the ``keras`` extra also ``keras:NAME``
(``keras.applications``), a saved ``.keras``/``.h5`` model, or a Keras model object.
Unknown names get a one-line error with the closest matches.

Each kind of spec has a :class:`~.loader.Loader` in its own module; this module only
keeps them in order and asks them. The order is the precedence: a Keras model is a
torch module on the torch backend, so the Keras loader comes before the module
loader, and each built-in name is also a timm name (without the offline weights), so
built-ins come before timm. Every backbone records its loader's name (``describe()["loader"]``), so
a saved run is rebuilt, and a backbone re-cut, by the loader that made it, and a
third-party loader (:func:`register_loader`) gets the same treatment as ours.
"""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from ..errors import InputError, did_you_mean
from .base import Backbone
from .builtin import BUILTIN, BUILTIN_LOADER, DEFAULT_BACKBONE
from .checkpoint import CHECKPOINT_LOADER
from .keras_loader import KERAS_LOADER
from .loader import Loader
from .module import MODULE_LOADER
from .timm_loader import TIMM_LOADER, is_timm_name

NO_WEIGHTS = ("none", "random", "scratch")

_LOADERS: list[Loader] = [
    KERAS_LOADER,
    MODULE_LOADER,
    BUILTIN_LOADER,
    TIMM_LOADER,
    CHECKPOINT_LOADER,
]


def register_loader(loader: Loader, *, before: str | None = None) -> Loader:
    """Add a loader to the table, ahead of the built-in ones by default.

    Ahead, because a plug-in usually claims specs the built-in loaders would take or
    reject (a name timm also knows, a file suffix), as timm's ``register_model`` lets
    a later registration win. A loader with a name already in the table replaces it.

    Args:
        loader: the entry; its ``name`` is what its backbones record.
        before: the name of the loader it goes in front of; default: the first.

    Returns:
        ``loader``, so a module can keep it as a constant while registering it.
    """
    if not isinstance(loader, Loader):
        raise TypeError(f"register_loader takes a Loader, got {type(loader).__name__}")
    _LOADERS[:] = [entry for entry in _LOADERS if entry.name != loader.name]
    names = [entry.name for entry in _LOADERS]
    if before is not None and before not in names:
        raise ValueError(f"no loader {before!r} to register before (loaders: {names})")
    _LOADERS.insert(names.index(before) if before is not None else 0, loader)
    return loader


def list_backbones(pattern: str = "", include_timm: bool = True) -> list[str]:
    """Built-in names first, then timm's architectures (``pattern`` filters by substring)."""
    names = list(BUILTIN)
    if include_timm:
        names += timm.list_models()
    return [n for n in names if pattern.lower() in n.lower()]


def create_backbone(
    spec: str | nn.Module = DEFAULT_BACKBONE,
    *,
    weights: str | Path | None = None,
    cut: str | None = None,
    pretrained: bool = True,
) -> Backbone:
    """Build a :class:`Backbone` from a spec: the first loader that takes it makes it.

    Args:
        spec: built-in name (``efficientnet_lite0``), timm name (``resnet18`` or
            ``timm:resnet18``), checkpoint path, or a torch module; Keras:
            ``keras:InceptionV3[,size=150]``, ``model.keras``/``model.h5`` or a Keras
            model (see :mod:`transferkit.backbones.keras_loader`).
        weights: a local weights file for a named architecture, or ``"none"`` for
            random initialisation. Without it, built-ins use their packaged weights and
            timm names download from the hub (a clear error offline).
        cut: layer to cut at (see ``Backbone.cut_points``); default: the full output.
        pretrained: ``False`` builds the architecture with random weights.

    Example:
        >>> bb = create_backbone("efficientnet_lite0", cut="blocks.4")  # doctest: +SKIP
        >>> bb.num_features  # doctest: +SKIP
        112
    """
    if isinstance(weights, str) and weights.lower() in NO_WEIGHTS:
        weights, pretrained = None, False
    for loader in _LOADERS:
        if loader.matches(spec):
            backbone = loader.create(spec, weights=weights, cut=cut, pretrained=pretrained)
            if "loader" not in vars(backbone):  # a loader that does not name itself
                backbone.loader = loader.name
            return backbone
    raise _unknown_spec(spec)


def _unknown_spec(spec) -> InputError:
    if not isinstance(spec, str) or not spec.strip():
        return InputError(f"backbone spec must be a name, a path or a torch module, got {spec!r}")
    return InputError(
        f"unknown backbone {spec!r}: not a built-in, not a timm model and no such file"
        f"{did_you_mean(spec, list_backbones())} "
        f" (built-in: {', '.join(BUILTIN)}; or any name in timm.list_models())"
    )


def rebuild_backbone(record: dict, module: nn.Module | None = None) -> Backbone:
    """The backbone a saved run recorded, with random weights: the run's own weights
    file fills them, so neither a download nor the original file is needed.

    Args:
        record: the run's backbone record, ``describe()`` (plus ``architecture`` and
            ``weights_digest``). Its ``loader`` picks the loader; a record written
            before backbones named their loader is read by what it holds: Keras
            facts, then ``module``, a built-in spec, a timm architecture.
        module: the module (or Keras model) a run trained on a Python object was
            made from; a code object is not stored in a run, so it must be given
            again. For torch backbones it is used whatever the record says.

    Raises:
        InputError: the record needs a module and none was given, or names a loader
            that is not registered in this process.
    """
    name = record.get("loader") or _loader_of_old_record(record, module)
    return _loader_named(name, record.get("name")).rebuild(record, module)


def _loader_of_old_record(record: dict, module: nn.Module | None) -> str:
    """Which loader rebuilds a record that does not name one: the precedence runs used
    before loaders were recorded, so such runs load exactly as they did."""
    if record.get("keras"):
        return KERAS_LOADER.name
    if module is not None:
        return MODULE_LOADER.name
    if record.get("spec") in BUILTIN:
        return BUILTIN_LOADER.name
    arch = record.get("architecture")
    if arch and is_timm_name(arch):
        return TIMM_LOADER.name
    return MODULE_LOADER.name  # which says that the module must be given


def _loader_named(name: str, backbone_name: str | None) -> Loader:
    for loader in _LOADERS:
        if loader.name == name:
            return loader
    raise InputError(
        f"backbone {backbone_name!r} was made by loader {name!r}, which is not "
        f"registered in this process (loaders: {', '.join(e.name for e in _LOADERS)}); "
        "import the package that registers it first"
    )


def recut_backbone(backbone: Backbone, cut: str) -> Backbone:
    """The same backbone, same weights, cut at another layer, by the loader that made it.

    Cheap: nothing is copied or reloaded. The result may reuse the given backbone's
    modules and prune what runs after the new cut, so use only the returned backbone
    afterwards, never ``backbone``. Cutting at the current cut returns ``backbone``.

    Raises:
        InputError: ``cut`` is not a layer of the backbone, or (torch backbones) lies
            above the backbone's cut, whose upper layers are already gone.
    """
    if not isinstance(cut, str) or not cut:
        raise InputError(f"re-cutting a backbone needs a layer name, got {cut!r}")
    if cut == backbone.cut:
        return backbone
    return _loader_named(backbone.loader, backbone.name).recut(backbone, cut)
