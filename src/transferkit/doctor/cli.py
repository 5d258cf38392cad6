"""The ``doctor`` and ``next`` commands: argparse adders and their handlers.

Nothing heavy is imported before the arguments are parsed (the handlers import the
library inside ``cli_loading.loading``), so ``transferkit --help`` stays torch-free.
"""

from __future__ import annotations

import argparse
import json

from ..cli_loading import loading as _loading


def add_doctor(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="find suspected mislabels, duplicates, train/test leaks and outliers",
    )
    p.add_argument("data", help="folder of class sub-folders (or train/ val/ test/), or a CSV")
    p.add_argument("--backbone", default="efficientnet_lite0", help="whose features to look at")
    p.add_argument("--weights", help="local weights file, or 'none' for random init")
    p.add_argument("--image-size", type=int, help="input size (default: the backbone's)")
    p.add_argument("--seed", type=int, default=0, help="cross-validation folds and val split")
    p.add_argument(
        "--val-split", type=float, default=0.2, help="validation held out as fit holds it out"
    )
    p.add_argument("--workers", type=int, help="image-decoding processes")
    p.add_argument("--cache-dir", help="feature cache folder (default: fit's)")
    p.add_argument("--write-csv", metavar="FILE", help="write a relabelling sheet (a new file)")
    p.add_argument(
        "--run", help="also record the findings in this run directory and rebuild its report"
    )
    p.add_argument("--json", action="store_true", help="machine-readable findings")
    p.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    with _loading():
        from ..progress import console_logging
        from .record import record_in_run
        from .report import diagnose, render_text
        from .sheet import write_relabel_csv

    _check_args(args)
    console_logging(args.json)
    report = diagnose(
        args.data,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        seed=args.seed,
        val_split=args.val_split,
        cache_dir=args.cache_dir,
        workers=args.workers,
    )
    if args.write_csv:
        write_relabel_csv(report, args.write_csv)
    if args.run:
        record_in_run(args.run, report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(render_text(report))
        if args.write_csv:
            print(f"relabelling sheet: {args.write_csv} (edit 'label', then fit from it)")
    return 0


def _check_args(args: argparse.Namespace) -> None:
    from ..errors import InputError

    if args.image_size is not None and args.image_size < 8:
        raise InputError(f"--image-size must be >= 8 pixels, got {args.image_size}")
    if args.workers is not None and args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.val_split < 1:
        raise InputError(f"--val-split must be a fraction in [0, 1), got {args.val_split}")
    if args.write_csv:
        from .sheet import check_sheet_path

        check_sheet_path(args.write_csv)
    if args.run:
        from .record import check_run

        check_run(args.run)


def add_next(sub) -> None:
    p = sub.add_parser("next", help="rank unlabelled images by how much labelling them would help")
    p.add_argument("run", help="run directory (fit --out)")
    p.add_argument("folder", help="folder (or file, or glob) of unlabelled images")
    p.add_argument("--k", type=int, default=20, help="how many images to list")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--cache-dir", help="feature cache folder (default: fit's)")
    p.add_argument("--json", action="store_true", help="machine-readable ranking")
    p.set_defaults(handler=run_next)


def run_next(args: argparse.Namespace) -> int:
    with _loading():
        from ..progress import console_logging
        from .active import rank_next

    console_logging(args.json)
    result = rank_next(
        args.run, args.folder, k=args.k, batch_size=args.batch_size, cache_dir=args.cache_dir
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    print(f"Label next ({len(result.ranked)} of {result.considered} images, most useful first):")
    print("  rank  score  uncertainty  the model says                path")
    for r in result.ranked:
        says = f"{r['predicted']} {r['probability']:.0%} or {r['runner_up']}"
        numbers = f"{r['rank']:>4}  {r['score']:.3f}  {r['uncertainty']:>11.3f}"
        print(f"  {numbers}  {says:<28}  {r['path']}")
    print(
        "  (score, when picked: uncertainty times distance to the images picked before, "
        "relative to the farthest image left; so a few labels cover more ground)"
    )
    for f in result.unreadable:
        print(f"  not read: {f['path']}: {f['reason']}")
    return 0
