"""The thin command line (DESIGN §3): parse, call the library, print.

Exit status: 0 success, 2 usage or input error (one line), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

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
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="square input size in pixels")
    p.add_argument("--pooling", choices=POOLINGS, help="head pooling")
    p.add_argument("--hidden", type=int, help="head hidden layer width (0: none)")
    p.add_argument("--dropout", type=float, help="head dropout")
    p.add_argument("--val-split", type=float, help="validation fraction when there is no val/")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--workers", type=int, help="data loader processes")
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
    from .estimator import TransferClassifier

    _console_logging()
    cfg = fit_config_from_args(args)
    clf = TransferClassifier(cfg.backbone, cfg.strategy, config=cfg)
    clf.fit(args.data, run_dir=args.out, resume=args.resume)
    m = clf.metrics_
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


def _console_logging() -> None:
    import logging

    logger = logging.getLogger("transferkit")
    if not any(getattr(h, "_transferkit_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.INFO)
        handler._transferkit_console = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# --------------------------------------------------------------------------- main

_COMMANDS = [_add_inspect, _add_data, _add_datasets, _add_fit]


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
