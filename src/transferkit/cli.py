"""The thin command line: parse the arguments, call the library, print the result.

Exit status: 0 success, 2 usage or input error (one line), 1 unexpected failure.

Nothing heavy is imported before the arguments are parsed: ``--help``, ``--version``
and a mistyped command answer without torch (the parser's choices and defaults come
from the torch-free :mod:`transferkit.choices`); each handler imports what it needs
inside :func:`_loading`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence

from .choices import (
    BN_POLICIES,
    CLASS_WEIGHTS,
    DEVICES,
    EXPORT_FORMATS,
    EXPORT_OPSET,
    POOLINGS,
    PRECISIONS,
    PREDICT_FORMATS,
    SELECTIONS,
    STRATEGIES,
    fit_defaults,
)
from .cli_cache import add_cache
from .cli_loading import _freeze_after_imports
from .cli_loading import loading as _loading
from .doctor.cli import add_doctor, add_next
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
    with _loading():
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
    with _loading():
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
    with _loading():
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
    for flags, options in _FIT_OPTIONS:
        _add_fit_option(p, flags, **options)
    p.add_argument("--epochs", nargs="?", action=_AmbiguousEpochs, help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--overwrite", action="store_true", help="replace what an earlier run left in --out"
    )
    p.add_argument("--json", action="store_true", help="print metrics.json when done")
    p.set_defaults(handler=_run_fit)


# (flags, add_argument options): one per FitConfig setting; the default each shows in
# --help is FitConfig's own (``choices.fit_defaults``), so it cannot go stale.
_FIT_OPTIONS: tuple[tuple[tuple[str, ...], dict], ...] = (
    (("--backbone",), {"help": "built-in name, timm name or checkpoint path"}),
    (
        ("--weights",),
        {"help": "local weights file, or 'none' for random init (default: pretrained)"},
    ),
    (("--cut",), {"help": "layer to cut the backbone at, see `inspect` (default: measured)"}),
    (("--strategy",), {"choices": STRATEGIES, "help": "how to train"}),
    (("--unfreeze",), {"help": "fine-tuning: 'all' or 'top:N' whole blocks"}),
    (("--bn",), {"choices": BN_POLICIES, "help": "BatchNorm during fine-tuning"}),
    (
        ("--head-epochs",),
        {"type": int, "help": "max epochs of the head phase on cached features"},
    ),
    (("--fine-tune-epochs",), {"type": int, "help": "max epochs of the fine-tuning phase"}),
    (("--lr",), {"type": float, "help": "head learning rate"}),
    (("--fine-tune-lr",), {"type": float, "help": "fine-tuning learning rate, 10-100x lower"}),
    (
        ("--layer-decay",),
        {"type": float, "help": "layer-wise LR decay per block, e.g. 0.8 (default: none)"},
    ),
    (
        ("--batch-size",),
        {"type": int, "help": "global fine-tuning batch; torchrun processes share it"},
    ),
    (
        ("--image-size",),
        {"type": int, "help": "square input size in pixels (default: from the data)"},
    ),
    (("--pooling",), {"choices": POOLINGS, "help": "head pooling"}),
    (("--hidden",), {"type": int, "help": "head hidden layer width (0: none)"}),
    (("--dropout",), {"type": float, "help": "head dropout"}),
    (("--val-split",), {"type": float, "help": "validation fraction when there is no val/"}),
    (
        ("--selection",),
        {
            "choices": SELECTIONS,
            "help": "how the head is chosen: cv (k-fold cross-validation on every label), "
            "holdout (the validation split), auto (cv when the data are small)",
        },
    ),
    (
        ("--class-weight",),
        {
            "choices": CLASS_WEIGHTS,
            "help": "weigh each class by 1/its image count (default: every image counts once)",
        },
    ),
    (("--seed",), {"type": int, "help": "seeds splits, initialisation and augmentation"}),
    (("--device",), {"choices": DEVICES, "help": "where to compute; auto: CUDA when present"}),
    (
        ("--precision",),
        {"choices": PRECISIONS, "help": "forward passes; auto: bf16 on a GPU that has it"},
    ),
    (
        ("--compile",),
        {"action": "store_true", "help": "torch.compile the model for extraction and fine-tuning"},
    ),
    (("--workers",), {"type": int, "help": "data loader processes per process (default: auto)"}),
    (
        ("--unknown-rate",),
        {"type": float, "help": "share of known images that predict may call unknown"},
    ),
    (
        ("--coverage",),
        {"type": float, "help": "how often a prediction set must hold the true class"},
    ),
    (
        ("--tta",),
        {
            "action": "store_true",
            "help": "try mirror-image averaging; kept only if it improves validation",
        },
    ),
    (("--cache-dir",), {"help": "feature cache folder (default: ~/.cache/transferkit/features)"}),
    (
        ("--no-augment",),
        {
            "dest": "augment",
            "action": "store_false",
            "help": "train without augmentation (default: augmented)",
        },
    ),
    (
        ("--no-leak-check",),
        {
            "dest": "leak_check",
            "action": "store_false",
            "help": "skip the check for images shared between splits (default: checked)",
        },
    ),
)


def _add_fit_option(p, flags: tuple[str, ...], **options) -> None:
    """A fit flag whose value is None when not given (so a --config file's value
    stands), its help ending in FitConfig's default."""
    dest = options.get("dest") or flags[0].lstrip("-").replace("-", "_")
    default = fit_defaults().get(dest)
    shown = _shown_default(default)
    if shown is not None and "(default" not in options["help"]:
        options["help"] += f" (default {shown})"
    p.add_argument(*flags, default=None, **options)


def _shown_default(value) -> str | None:
    """How --help, README.md and docs/ write a default: on/off, 0.003, 100, avg."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _AmbiguousEpochs(argparse.Action):
    """A plain 'epochs' flag would mean one phase to some and the whole fit to
    others: say which flag does what instead of guessing."""

    def __call__(self, parser, namespace, values, option_string=None):
        d = fit_defaults()
        parser.error(
            f"{option_string} is ambiguous: use --head-epochs N (max epochs of the head on "
            f"cached features, default {d['head_epochs']}) or --fine-tune-epochs N "
            f"(max epochs of fine-tuning, default {d['fine_tune_epochs']})"
        )


_HEAD_FLAGS = ("pooling", "hidden", "dropout")
_FIT_FLAGS = (
    "backbone",
    "weights",
    "cut",
    "strategy",
    "unfreeze",
    "bn",
    "head_epochs",
    "fine_tune_epochs",
    "lr",
    "fine_tune_lr",
    "layer_decay",
    "batch_size",
    "image_size",
    "val_split",
    "class_weight",
    "selection",
    "seed",
    "device",
    "precision",
    "compile",
    "workers",
    "cache_dir",
    "augment",
    "unknown_rate",
    "coverage",
    "tta",
    "leak_check",
)


def fit_config_from_args(args: argparse.Namespace):
    """defaults < --config file < flags: the run's ``FitConfig``."""
    import dataclasses

    from .config import FitConfig
    from .errors import InputError

    overrides = {k: getattr(args, k) for k in _FIT_FLAGS if getattr(args, k) is not None}
    base = FitConfig.from_file(args.config) if args.config else FitConfig()
    known = {f.name for f in dataclasses.fields(FitConfig)}
    for name in overrides.keys() - known:  # a flag ahead of the FitConfig in use
        raise InputError(f"--{name.replace('_', '-')} is not supported by this version's fit")
    head = {k: getattr(args, k) for k in _HEAD_FLAGS if getattr(args, k) is not None}
    if head:
        overrides["head"] = dataclasses.replace(base.head, **head)
    return dataclasses.replace(base, **overrides)


def _run_fit(args: argparse.Namespace) -> int:
    with _loading():
        from .distributed import environment
        from .estimator import TransferClassifier

    _console_logging()
    cfg = fit_config_from_args(args)
    clf = TransferClassifier.from_config(cfg)
    clf.fit(args.data, run_dir=args.out, resume=args.resume, overwrite=args.overwrite)
    if not environment().is_main:  # under torchrun: one report, from rank 0
        return 0
    if args.json:
        _print_json(clf.metrics_)
    else:
        print(fit_summary(clf.metrics_, args.out))
    return 0


def fit_summary(m: dict, out) -> str:
    """The line ``fit`` ends with: the scores there are, what was trained, where."""
    if "val_accuracy" in m and m.get("n_val", 1):
        scores = [f"val accuracy {m['val_accuracy']:.4f}"]
    else:
        scores = ["no validation images"]
    if "test_accuracy" in m:
        scores.append(f"test accuracy {m['test_accuracy']:.4f}")
    return (
        f"{', '.join(scores)} ({m['strategy']}, {m['backbone']}, {m['seconds_total']:.1f}s); "
        f"run saved to {out}"
    )


def _console_logging(quiet: bool = False) -> None:
    from .progress import console_logging

    console_logging(quiet)


# ----------------------------------------------------------------------- evaluate


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained model on labelled images")
    p.add_argument("run", help="run directory, or an exported .onnx/TorchScript file")
    p.add_argument("data", help="class folders (the test/ split if there is one), or a CSV")
    p.add_argument("--json", action="store_true", help="machine-readable metrics")
    p.add_argument(
        "--ood",
        metavar="FOLDER",
        help="images of none of the model's classes: adds the AUROC of the OOD score "
        "and the share of them called unknown",
    )
    _add_trust_flags(p)
    _add_inference_flags(p)
    p.set_defaults(handler=_run_evaluate)


def _add_trust_flags(p) -> None:
    p.add_argument(
        "--unknown-rate",
        type=float,
        help="share of known images that may be called unknown (default: the run's)",
    )
    p.add_argument(
        "--coverage",
        type=float,
        help="how often a prediction set must hold the true class (default: the run's)",
    )


def _add_inference_flags(p) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument(
        "--device", choices=DEVICES, default="cpu", help="where a torch model runs (default cpu)"
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    with _loading():
        from .evaluation import evaluate_predictor
        from .reports.text import format_evaluation

    predictor = _trusted_predictor(args)
    ev = evaluate_predictor(predictor, args.data, ood=args.ood)
    if args.json:
        _print_json(ev.to_dict())
    else:
        print(format_evaluation(ev))
        print(format_trust_evaluation(ev.trust))
    return 0


def _trusted_predictor(args: argparse.Namespace):
    """The model's predictor with --unknown-rate/--coverage applied (no refit: the
    thresholds come from the run's held-out scores)."""
    from .predict import load_predictor

    predictor = load_predictor(args.run, device=args.device, batch_size=args.batch_size)
    return predictor.with_trust_settings(args.unknown_rate, args.coverage)


def format_trust_evaluation(fields: dict) -> str:
    """evaluate's trust lines: prediction sets, unknown shares, notes."""

    def show(value, fmt="{:.4f}"):
        return "n/a" if value is None else fmt.format(value)

    lines = [
        f"prediction sets: coverage {show(fields.get('coverage'))} (target "
        f"{show(fields.get('coverage_target'), '{:g}')}), mean size "
        f"{show(fields.get('mean_set_size'), '{:.2f}')}",
        f"called unknown: {show(fields.get('unknown_share'))} of these images (allowed "
        f"{show(fields.get('unknown_rate'), '{:g}')})",
    ]
    if "ood_auroc" in fields:
        lines.append(
            f"--ood images: AUROC {show(fields['ood_auroc'])}, called unknown "
            f"{show(fields.get('ood_unknown_share'))} of {fields['ood_images']}"
        )
    lines += [f"note: {n}" for n in fields.get("trust_notes", [])]
    return "\n".join(lines)


# ------------------------------------------------------------------------ predict


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify image files, folders and globs")
    p.add_argument("run", help="run directory, or an exported .onnx/TorchScript file")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or glob")
    p.add_argument("--top-k", type=int, default=1, help="classes listed per image (default 1)")
    p.add_argument("--format", choices=PREDICT_FORMATS, default="table", help="output format")
    _add_trust_flags(p)
    _add_inference_flags(p)
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    with _loading():
        from .errors import InputError
        from .reports.text import format_failures, format_predictions

    predictor = _trusted_predictor(args)
    result = predictor.predict(args.inputs, top_k=args.top_k)
    if args.format == "json" or result.predictions:
        print(format_predictions(result, args.format))
    if result.failures and args.format != "json":
        print(format_failures(result.failures), file=sys.stderr)
    if result.notes and result.predictions and args.format != "json":
        print("\n".join(f"transferkit: note: {n}" for n in result.notes), file=sys.stderr)
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
    p.add_argument("--out", required=True, help="file to write; FILE.json goes beside it")
    p.add_argument(
        "--format", choices=EXPORT_FORMATS, help="model format (default: from --out's suffix)"
    )
    p.add_argument(
        "--opset",
        type=int,
        default=EXPORT_OPSET,
        help=f"ONNX opset version (default {EXPORT_OPSET})",
    )
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    with _loading():
        from .export import export_run

    chosen = {"format": args.format} if args.format else {}  # else export_run reads --out
    r = export_run(args.run, args.out, opset=args.opset, **chosen)
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
    with _loading():
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
    with _loading():
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
    with _loading():
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
    add_doctor,
    add_next,
    add_cache,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    from ._version import __version__

    return __version__


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors that suggest what was probably meant."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", _Parser)
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args=None, namespace=None):
        if self.prog == "transferkit":  # the root: unknown options first, by name
            _check_options(self, sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        """``transferkit fit: error: ...`` on one line (with a 'did you mean' where a
        close option exists), exit 2; the options are one ``--help`` away."""
        self.exit(2, f"{self.prog}: error: {_suggest(message)} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Help ends in the option's default where it has one and does not say it."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        shown = _shown_default(action.default)
        if "(default" in text or shown is None or action.option_strings == []:
            return text
        if isinstance(action.default, bool) or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default {shown})"


def _suggest(message: str) -> str:
    """argparse's 'invalid choice' message with the closest choices appended."""
    from .errors import did_you_mean

    m = re.match(r"argument (\S+): invalid choice: '(.*)' \(choose from (.*)\)$", message)
    if not m:
        return message
    choices = re.findall(r"'([^']*)'", m.group(3))
    return f"{m.group(1)}: invalid choice {m.group(2)!r}{did_you_mean(m.group(2), choices)}"


def _check_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Find the (sub)command's parser and report the first option it does not have,
    with the closest ones. Done before argparse parses, whose own message for a
    mistyped option would come after a missing-argument one."""
    command, rest = _command_parser(parser, argv)
    known = [s for a in command._actions for s in a.option_strings]
    for token in rest:
        if token == "--":
            return
        flag = token.split("=", 1)[0]
        if not flag.startswith("--") or any(k.startswith(flag) for k in known):
            continue
        hints = _close_options(flag, command)
        hint = f"; did you mean {' or '.join(hints)}?" if hints else ""
        command.error(f"unrecognized argument {flag}{hint}")


def _command_parser(parser, argv: list[str]):
    """The innermost parser that ``argv`` names (``data check``), and what follows it."""
    for i, token in enumerate(argv):
        if token.startswith("-"):
            continue
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or token not in sub.choices:
            return parser, argv
        return _command_parser(sub.choices[token], argv[i + 1 :])
    return parser, argv


def _close_options(flag: str, parser: argparse.ArgumentParser) -> list[str]:
    """Options close to ``flag``: by spelling, by initials (learning-rate -> ``--lr``)
    and by the words of their help (learning-rate -> the options whose help says
    'learning rate')."""
    actions = [a for a in parser._actions if a.help != argparse.SUPPRESS]
    options = [s for a in actions for s in a.option_strings if s.startswith("--")]
    words = flag.lstrip("-").split("-")
    hits = difflib.get_close_matches(flag, options, n=3, cutoff=0.7)
    hits += [o for o in options if o[2:] == "".join(w[:1] for w in words)]
    phrase = " ".join(words)
    hits += [a.option_strings[-1] for a in actions if phrase in (a.help or "").lower()]
    return list(dict.fromkeys(hits))[:3]


def entry_point() -> None:
    """The ``transferkit`` command (and ``python -m transferkit``).

    Once a command has imported what it needs, it freezes (``gc.freeze``) what those
    imports created: ~600,000 long-lived objects of torch, torchvision and timm, which
    later collections and the ones the interpreter runs at exit would otherwise scan
    again for nothing (~1 s of a warm ``transferkit fit``). Only the command does this:
    a library import must not change the collector's state of the user's process.
    ``--help``, ``--version`` and usage errors import none of it and freeze nothing."""
    _freeze_after_imports["pending"] = True
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a usage error (2)
        return done.code if isinstance(done.code, int) else 2
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
