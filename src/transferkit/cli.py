"""The thin command line: parse the arguments, call the library, print the result.

Exit status: 0 success, 2 usage or input error (one line), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

from .compute import PRECISIONS
from .config import DEVICES, STRATEGIES, FitConfig
from .errors import TransferkitError
from .freezing import BN_POLICIES
from .heads import POOLINGS

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ------------------------------------------------------------------------ inspect


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="layers, shapes, weight counts and cut points of a backbone")
    p.add_argument("backbone", help="built-in name, timm name or checkpoint path")
    p.add_argument("--cut", help="layer to cut at (default: the full feature output)")
    p.add_argument("--weights", help="local weights file, or 'none' for random init")
    p.add_argument("--depth", type=int, default=1, help="layer-tree depth shown in the table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from .backbones import create_backbone
    from .backbones.introspect import layer_report

    backbone = create_backbone(args.backbone, weights=args.weights, cut=args.cut)
    report = layer_report(backbone)
    if args.json:
        _print_json(report)
        return 0
    from . import console

    console.print_inspect(report, depth=args.depth)
    return 0


# --------------------------------------------------------------------------- data


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="check a dataset: what is usable, what is not and why")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    c = actions.add_parser("check", help="scan DATA and report usable images and every problem")
    c.add_argument("data", help="folder of class folders (or train/ [val/] [test/]), or a CSV")
    c.add_argument("--json", action="store_true", help="machine-readable report")
    c.add_argument(
        "--val-split",
        type=float,
        default=0.2,
        help="fraction held out for validation when DATA has no val/ (default 0.2)",
    )
    c.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    c.set_defaults(handler=_run_data_check)


def _run_data_check(args: argparse.Namespace) -> int:
    from .data import check_data, render_text

    report = check_data(args.data, val_split=args.val_split, seed=args.seed)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(render_text(report))
    if not report.usable:
        print(f"transferkit: error: {report.reason}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------- datasets


def _add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="write a demo dataset as PNG class folders")
    names = p.add_subparsers(dest="dataset", metavar="NAME")
    names.required = True
    for name, about in (
        ("fashion-mnist", "Fashion-MNIST (Debian package dataset-fashion-mnist)"),
        ("digits", "scikit-learn's 8x8 handwritten digits"),
    ):
        d = names.add_parser(name, help=about)
        d.add_argument("out", help="folder to create (must be new or empty)")
        d.add_argument("--per-class", type=int, default=100, help="training images per class")
        d.add_argument("--test", type=int, default=200, help="test images in total (stratified)")
        d.add_argument("--seed", type=int, default=0, help="which images are chosen")
        d.set_defaults(handler=_run_datasets)


def _run_datasets(args: argparse.Namespace) -> int:
    from .data import write_dataset

    info = write_dataset(
        args.dataset, args.out, per_class=args.per_class, test=args.test, seed=args.seed
    )
    print(
        f"{info.name}: {info.train_files} train + {info.test_files} test PNGs in "
        f"{len(info.classes)} classes at {info.path}"
    )
    return 0


# ---------------------------------------------------------------------------- fit


def _add_fit(sub) -> None:
    p = sub.add_parser("fit", help="train a classifier on a folder of labelled images")
    p.add_argument("data", help="folder of class sub-folders (or train/ val/ test/), or a CSV")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--config", help="JSON file of fit settings (flags override it)")
    p.add_argument("--backbone", help="built-in name, timm name or checkpoint path")
    p.add_argument("--weights", help="local weights file, or 'none' for random init")
    p.add_argument("--cut", help="layer to cut the backbone at (see `inspect`)")
    p.add_argument("--strategy", choices=STRATEGIES)
    p.add_argument("--unfreeze", help="fine-tuning: 'all' or 'top:N' whole blocks")
    p.add_argument("--bn", choices=BN_POLICIES, help="BatchNorm during fine-tuning")
    p.add_argument("--epochs", type=int, help="max epochs of the head phase")
    p.add_argument("--fine-tune-epochs", type=int, help="max epochs of the fine-tuning phase")
    p.add_argument("--lr", type=float, help="head learning rate")
    p.add_argument("--fine-tune-lr", type=float, help="fine-tuning learning rate (10-100x lower)")
    p.add_argument("--layer-decay", type=float, help="layer-wise LR decay per block, e.g. 0.8")
    p.add_argument(
        "--batch-size", type=int, help="global batch; torchrun processes share it evenly"
    )
    p.add_argument("--image-size", type=int, help="square input size in pixels")
    p.add_argument("--pooling", choices=POOLINGS, help="head pooling")
    p.add_argument("--hidden", type=int, help="head hidden layer width (0: none)")
    p.add_argument("--dropout", type=float, help="head dropout")
    p.add_argument("--val-split", type=float, help="validation fraction when there is no val/")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=DEVICES)
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="forward passes: auto (bf16 on a GPU that has it, else fp32), fp32, bf16",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model for fine-tuning and feature extraction",
    )
    p.add_argument("--workers", type=int, help="data loader processes (per process)")
    p.add_argument("--cache-dir", help="feature cache folder")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--json", action="store_true", help="print metrics.json when done")
    p.set_defaults(handler=_run_fit)


_HEAD_FLAGS = ("pooling", "hidden", "dropout")
_FIT_FLAGS = (
    "backbone",
    "weights",
    "cut",
    "strategy",
    "unfreeze",
    "bn",
    "epochs",
    "fine_tune_epochs",
    "lr",
    "fine_tune_lr",
    "layer_decay",
    "batch_size",
    "image_size",
    "val_split",
    "seed",
    "device",
    "precision",
    "compile",
    "workers",
    "cache_dir",
    "augment",
)


def fit_config_from_args(args: argparse.Namespace) -> FitConfig:
    """defaults < --config file < flags."""
    overrides = {k: getattr(args, k) for k in _FIT_FLAGS if getattr(args, k) is not None}
    base = FitConfig.from_file(args.config) if args.config else FitConfig()
    head = {k: getattr(args, k) for k in _HEAD_FLAGS if getattr(args, k) is not None}
    if head:
        overrides["head"] = dataclasses.replace(base.head, **head)
    return dataclasses.replace(base, **overrides)


def _run_fit(args: argparse.Namespace) -> int:
    from .distributed import environment
    from .estimator import TransferClassifier

    _console_logging()
    cfg = fit_config_from_args(args)
    clf = TransferClassifier.from_config(cfg)
    clf.fit(args.data, run_dir=args.out, resume=args.resume)
    m = clf.metrics_
    if not environment().is_main:  # under torchrun: one report, from rank 0
        return 0
    if args.json:
        _print_json(m)
        return 0
    line = f"val accuracy {m.get('val_accuracy', float('nan')):.4f}"
    if "test_accuracy" in m:
        line += f", test accuracy {m['test_accuracy']:.4f}"
    print(
        f"{line} ({m['strategy']}, {m['backbone']}, {m['seconds_total']:.1f}s); "
        f"run saved to {args.out}"
    )
    return 0


def _console_logging(quiet: bool = False) -> None:
    """Log lines to stderr (progress, phases); ``quiet`` keeps only warnings, so
    ``--json`` output stays clean to pipe."""
    import logging

    logger = logging.getLogger("transferkit")
    if not any(getattr(h, "_transferkit_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.WARNING if quiet else logging.INFO)
        handler._transferkit_console = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# ----------------------------------------------------------------------- evaluate


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained model on labelled images")
    p.add_argument("run", help="run directory, or an exported .onnx/TorchScript file")
    p.add_argument("data", help="class folders (the test/ split if there is one), or a CSV")
    p.add_argument("--json", action="store_true", help="machine-readable metrics")
    _add_inference_flags(p)
    p.set_defaults(handler=_run_evaluate)


def _add_inference_flags(p) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument(
        "--device", choices=DEVICES, default="cpu", help="where a torch model runs (default cpu)"
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_run
    from .reports.text import format_evaluation

    ev = evaluate_run(args.run, args.data, device=args.device, batch_size=args.batch_size)
    if args.json:
        _print_json(ev.to_dict())
    else:
        print(format_evaluation(ev))
    return 0


# ------------------------------------------------------------------------ predict


# Spelled out, not imported: the modules that own them pull in matplotlib and onnx
# machinery, which every CLI call would then pay for (a test keeps them in sync).
PREDICT_FORMATS = ("table", "json", "csv")
EXPORT_FORMATS, EXPORT_OPSET = ("onnx", "torchscript"), 17


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files, folders and globs")
    p.add_argument("run", help="run directory, or an exported .onnx/TorchScript file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or glob")
    p.add_argument("--top-k", type=int, default=1, help="classes listed per image (default 1)")
    p.add_argument("--format", choices=PREDICT_FORMATS, default="table", help="output format")
    _add_inference_flags(p)
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .predict import load_predictor
    from .reports.text import format_failures, format_predictions

    predictor = load_predictor(args.run, device=args.device, batch_size=args.batch_size)
    result = predictor.predict(args.inputs, top_k=args.top_k)
    if result.predictions or args.format == "json":
        print(format_predictions(result, args.format))
    if result.failures and args.format != "json":
        print(format_failures(result.failures), file=sys.stderr)
    if not result.predictions:
        raise InputError(f"nothing could be predicted ({len(result.failures)} input(s) failed)")
    if result.failures:
        print(
            f"transferkit: {len(result.predictions)} predicted, "
            f"{len(result.failures)} could not be (listed above)",
            file=sys.stderr,
        )
    return 0


# ------------------------------------------------------------------------- export


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run to ONNX or TorchScript (+ sidecar JSON)")
    p.add_argument("run", help="run directory")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--out", required=True, help="file to write; FILE.json goes beside it")
    p.add_argument("--opset", type=int, default=EXPORT_OPSET, help="ONNX opset version")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_run

    r = export_run(args.run, args.out, format=args.format, opset=args.opset)
    batches = " and ".join(map(str, r.batch_sizes))
    print(f"exported {r.format} to {r.path} (classes and preprocessing in {r.sidecar})")
    print(
        f"verified with {r.checked_with} on batches of {batches}: "
        f"max |logit difference| vs torch = {r.max_abs_diff:.3g} (bound {r.bound:.3g})"
    )
    return 0


# ------------------------------------------------------------------------- report


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="rebuild RUN/report.html from the run's files")
    p.add_argument("run", help="run directory")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .reports.run_report import write_run_report

    print(write_run_report(args.run))
    return 0


# ------------------------------------------------------------- recommend / rank


def _add_recommend(sub) -> None:
    p = sub.add_parser("recommend", help="measure the data against a backbone; advise a strategy")
    p.add_argument("data", help="folder of class sub-folders (or train/ val/ test/), or a CSV")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", help="local weights file, or 'none' for random init")
    p.add_argument("--image-size", type=int, help="input size (default: suggested from the data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_recommend)


def _run_recommend(args: argparse.Namespace) -> int:
    from .recommend import recommend

    _console_logging(quiet=args.json)
    decision = recommend(
        args.data,
        args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        seed=args.seed,
        workers=args.workers,
    )
    if args.json:
        _print_json(decision.to_dict())
    else:
        from . import console

        console.print_decision(decision.to_dict())
    return 0


def _add_rank(sub) -> None:
    p = sub.add_parser("rank", help="rank backbones for the data before training any")
    p.add_argument("data", help="folder of class sub-folders (or train/ val/ test/), or a CSV")
    p.add_argument("--backbones", required=True, help="comma-separated specs")
    p.add_argument(
        "--by",
        default="linear_probe_accuracy",
        choices=("linear_probe_accuracy", "logme", "knn_accuracy", "bn_similarity"),
    )
    p.add_argument("--image-size", type=int, help="input size (default: suggested from the data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_rank)


def _run_rank(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .recommend import rank_backbones

    specs = [s.strip() for s in args.backbones.split(",") if s.strip()]
    if not specs:
        raise InputError("--backbones needs at least one backbone spec")
    _console_logging(quiet=args.json)
    ranking = rank_backbones(
        args.data,
        specs,
        by=args.by,
        image_size=args.image_size,
        seed=args.seed,
        workers=args.workers,
    )
    if args.json:
        _print_json(ranking.to_dict())
    else:
        from . import console

        console.print_ranking(ranking.to_dict())
    return 0


# --------------------------------------------------------------------------- main

_COMMANDS = [
    _add_inspect,
    _add_data,
    _add_datasets,
    _add_fit,
    _add_evaluate,
    _add_predict,
    _add_export,
    _add_report,
    _add_recommend,
    _add_rank,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferkit",
        description="Transfer learning for small labelled image sets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def entry_point() -> None:
    """The ``transferkit`` command (and ``python -m transferkit``).

    Before running the command it freezes (``gc.freeze``) what the imports created:
    ~600,000 long-lived objects of torch, torchvision and timm, which later
    collections and the ones the interpreter runs at exit would otherwise scan again
    for nothing (~1 s of a warm ``transferkit fit``). Only the command does this: a
    library import must not change the collector's state of the user's process."""
    import gc

    gc.freeze()
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TransferkitError as exc:
        print(f"transferkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("transferkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `transferkit predict ... | head` closed the pipe: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug of ours: one line, traceback on request
        if os.environ.get("TRANSFERKIT_DEBUG"):
            raise
        print(
            f"transferkit: unexpected failure: {type(exc).__name__}: {exc} "
            "(set TRANSFERKIT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
