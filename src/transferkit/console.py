"""Human-readable terminal output (rich). Library code returns data; this renders it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def print_inspect(report: dict, depth: int = 1) -> None:
    table = Table(
        title=f"{report['name']}  (input {_shape(report['input_shape'])}, cut at {report['cut']})"
    )
    for col in ("layer", "type", "output", "params", "trainable", "non-trainable"):
        table.add_column(
            col, justify="right" if col in ("params", "trainable", "non-trainable") else "left"
        )
    for layer in report["layers"]:
        if layer["depth"] >= depth:
            continue
        table.add_row(
            "  " * layer["depth"] + layer["name"],
            layer["type"],
            _shape(layer["output_shape"]),
            f"{layer['params']:,}",
            f"{layer['trainable_params']:,}",
            f"{layer['non_trainable_params']:,}",
        )
    console.print(table)
    t = report["totals"]
    console.print(
        f"Total weights: {t['weights']} tensors, {t['params']:,} params\n"
        f"Trainable:     {t['trainable_weights']} tensors, {t['trainable_params']:,} params\n"
        f"Non-trainable: {t['non_trainable_weights']} tensors, {t['non_trainable_params']:,} params"
    )
    console.print(
        f"Features: {report['num_features']} ({_shape(report['feature_shape'])} per image)"
    )
    console.print(f"Cut points: {', '.join(report['cut_points'])}")
    dc = report["data_config"]
    console.print(
        f"Preprocessing: {_shape(dc['input_size'])} {dc['interpolation']}, mean {dc['mean']}, "
        f"std {dc['std']}, crop {dc['crop_pct']}"
    )
