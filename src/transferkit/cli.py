"""The thin command line (DESIGN §3): parse, call the library, print.

Exit status: 0 success, 2 usage or input error (one line), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from .errors import TransferkitError

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


# --------------------------------------------------------------------------- main

_COMMANDS = [_add_inspect, _add_data, _add_datasets]


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
