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


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def print_decision(d: dict) -> None:
    size = d["size"]
    console.print(
        f"Data: {size['n_train']} training images, {size['classes']} classes, "
        f"{size['per_class_median']:.0f} per class (median, min {size['per_class_min']}); "
        f"images about {size['image_side_median']} px"
    )
    sim = d["similarity"]
    table = Table(title=f"Transferability per cut ({d['image_size']} px)")
    for col in ("cut", "linear probe", "k-NN", "LogME", "BN similarity"):
        table.add_column(col, justify="left" if col == "cut" else "right")
    for cut, s in d["scores"].items():
        mark = " *" if cut == d["best_cut"] else ""
        table.add_row(
            cut + mark,
            _fmt(s["linear_probe_accuracy"]),
            _fmt(s["knn_accuracy"]),
            _fmt(s["logme"]),
            _fmt(sim["bn_per_cut"].get(cut)),
        )
    console.print(table)
    console.print(f"BN-statistics similarity overall: {_fmt(sim['bn_overall'])}")
    if d.get("candidates"):
        console.print(candidates_table(d["candidates"], d["cut"]))
    unfreeze = f", unfreeze {d['unfreeze']}" if d["unfreeze"] else ""
    console.print(
        f"[bold]Advice: {d['strategy']} at cut {d['cut']}{unfreeze}, "
        f"image size {d['image_size']}[/bold]"
    )
    console.print(f"Why: {d['reason']}")
    console.print(f"(measured in {d['seconds']:.1f}s)")


def candidates_table(rows: list[dict], kept: str) -> Table:
    """The features compared by cross-validation (small data), the kept one marked."""
    table = Table(title="Features compared by cross-validation (* kept)")
    for col in ("features at", "size", "best head", "CV accuracy", "+/- std", "log-loss"):
        table.add_column(col, justify="left" if col in ("features at", "best head") else "right")
    for r in rows:
        mark = " *" if r["cut"] == kept else ""
        if "skipped" in r:
            table.add_row(r["cut"], str(r["features"]), r["skipped"], "-", "-", "-")
            continue
        table.add_row(
            r["cut"] + mark,
            str(r["features"]),
            r["head"],
            _fmt(r["cv_accuracy"]),
            _fmt(r["cv_accuracy_std"]),
            _fmt(r["cv_log_loss"]),
        )
    return table


def print_ranking(r: dict) -> None:
    table = Table(title=f"Backbones ranked by {r['ranked_by']}")
    for col in (
        "#",
        "backbone",
        "cut",
        "features",
        "px",
        "linear probe",
        "k-NN",
        "LogME",
        "BN sim.",
        "test probe acc.",
        "seconds",
    ):
        table.add_column(col, justify="left" if col in ("backbone", "cut") else "right")
    for i, b in enumerate(r["backbones"], 1):
        s = b["scores"]
        table.add_row(
            str(i),
            b["backbone"],
            b["cut"],
            str(b["num_features"]),
            str(b["image_size"]),
            _fmt(s.get("linear_probe_accuracy")),
            _fmt(s.get("knn_accuracy")),
            _fmt(s.get("logme")),
            _fmt(s.get("bn_similarity")),
            _fmt(b["test_probe_accuracy"]),
            f"{b['seconds']:.1f}",
        )
    console.print(table)
    if r["kendall_tau"]:
        taus = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in r["kendall_tau"].items())
        console.print(f"Kendall tau vs measured linear-probe test accuracy: {taus}")
