"""The graph of a Keras functional model: operations in order, choke points, blocks.

A *choke point* is an operation every path from the input to the output passes
through (``mixed0`` ... ``mixed10`` in InceptionV3, each residual block's output in
ResNet50): cutting there leaves nothing dangling. The *blocks* are the whole units
between them, so unfreezing ``top:N`` never splits a conv from its BatchNorm nor a
residual block from its skip connection: fine-tuning unfreezes whole blocks.
"""

from __future__ import annotations

from .base import Block


def operations(model) -> list:
    """Layers and raw ops (``x + y`` makes an ``Add`` op, not a layer), in Keras's
    topological order."""
    return list(getattr(model, "operations", None) or model.layers)


def _parents(model) -> dict[str, set[str]] | None:
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if not nodes_by_depth:
        return None
    parents: dict[str, set[str]] = {}
    for nodes in nodes_by_depth.values():
        for node in nodes:
            entry = parents.setdefault(node.operation.name, set())
            entry.update(p.operation.name for p in node.parent_nodes)
    return parents


def choke_points(model) -> list[str]:
    """Operations every input-to-output path passes through, in order: in a topological
    order, only that operation's output is still needed after it."""
    names = [op.name for op in operations(model)]
    parents = _parents(model)
    if parents is None:  # no graph to read: treat the model as a chain
        return names
    last_use = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        for p in parents.get(n, ()):
            last_use[p] = max(last_use.get(p, i), i)
    last_use[names[-1]] = len(names)
    live: set[str] = set()
    out = []
    for i, n in enumerate(names):
        live = {m for m in live if last_use[m] > i} | {n}
        if live == {n}:
            out.append(n)
    return out


def _weights(op) -> list:
    return list(getattr(op, "weights", None) or [])


def discover_blocks(model) -> list[Block]:
    """Whole units: segments between choke points. A segment without weights, or of
    normalisation layers only, joins the unit before it; padding joins the unit after
    it (it belongs to the conv it pads); what precedes the first unit joins it."""
    chokes = set(choke_points(model))
    segments, current = [], []
    for op in operations(model):
        current.append(op)
        if op.name in chokes:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    blocks: list[list] = []
    pending: list = []
    for seg in segments:
        kinds = [type(op).__name__ for op in seg]
        weighted = any(_weights(op) for op in seg)
        if all(k.startswith("ZeroPadding") for k in kinds):
            pending += seg
        elif weighted and not (blocks and all("Normalization" in k for k in kinds)):
            blocks.append(pending + seg)
            pending = []
        elif blocks and not pending:
            blocks[-1] += seg
        else:
            pending += seg
    if pending:
        if blocks:
            blocks[-1] += pending
        else:
            blocks.append(pending)
    return [Block(b[-1].name, tuple(op.name for op in b)) for b in blocks]
