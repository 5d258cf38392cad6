"""What a backbone loader is: how it recognises a spec, and how it creates, rebuilds
and re-cuts the backbones it makes.

The registry (:mod:`.registry`) keeps an ordered table of :class:`Loader` s and asks
each one in turn. This module holds only the record type, so a loader module (built in
or third-party) can define its entry without importing the registry, which imports
every loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import InputError
from .base import Backbone, recut_module_backbone


def is_spec_text(spec: object) -> bool:
    """Whether ``spec`` is a non-blank string: what name- and path-based loaders take."""
    return isinstance(spec, str) and bool(spec.strip())


def _no_rebuild(record: dict, module: nn.Module | None) -> Backbone:
    raise InputError(
        f"the backbone {record.get('name')!r} was made by loader {record.get('loader')!r}, "
        "which cannot rebuild it from a run"
    )


@dataclass(frozen=True)
class Loader:
    """One way of turning a spec into a :class:`~.base.Backbone`.

    Attributes:
        name: recorded as ``describe()["loader"]`` by every backbone this loader makes,
            so a saved run finds its way back here (:func:`~.registry.rebuild_backbone`).
        matches: ``matches(spec) -> bool``, whether this loader takes the spec (a
            string or an object). It must be cheap and must not load anything: the
            registry asks every loader in order until one says yes.
        create: ``create(spec, *, weights, cut, pretrained) -> Backbone``, with the
            meaning :func:`~.registry.create_backbone` documents.
        rebuild: ``rebuild(record, module) -> Backbone``: the architecture a run
            recorded (``describe()`` plus ``architecture``), with any weights (the
            run's own file fills them afterwards). ``module`` is the user's module or
            Keras model for runs trained on a Python object, else ``None``.
        recut: ``recut(backbone, cut) -> Backbone``: the same weights cut at another
            layer. The default re-wraps a torch backbone's module, which suits any
            loader whose backbones are plain :class:`~.base.Backbone` s.
    """

    name: str
    matches: Callable[[object], bool]
    create: Callable[..., Backbone]
    rebuild: Callable[[dict, nn.Module | None], Backbone] = _no_rebuild
    recut: Callable[[Backbone, str], Backbone] = recut_module_backbone
