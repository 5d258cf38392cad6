"""Benchmark: on SMALL labelled data, does transferkit's default fit beat the simplest
strong baselines?

For each dataset and seed (the seed picks the images and is the fit's seed):

  - fashion-mnist: 10 training images per class, 1,000 test images;
  - digits (scikit-learn's 8x8): 20 training images per class, 500 test images;
  - with --large, also Fashion-MNIST at 100 per class, 2,000 test, seed 0 only (the
    "must not get worse" check: the fit's test accuracy and seconds, no baselines).

three things are measured, one after the other in one process:

  1. fit: ``TransferClassifier(seed=s, cache_dir=<fresh>).fit(data, run_dir=...)``
     with every other setting at its default (strategy auto, efficientnet_lite0 with
     its built-in weights), a fresh feature cache and a fresh TRANSFERKIT_CACHE_DIR:
     test accuracy, the strategy, cut and image size it chose, and the wall seconds
     of the whole fit (measure, choose, train, evaluate, save the run folder), with
     its CPU seconds and the 1-minute load average around it (wall time on a shared
     machine grows with the load; CPU time much less).
  2. lr per cut: the fit's backbone, uncut, at the image size the fit chose and with
     transferkit's eval preprocessing (``advisor.measure.eval_loader``), gives globally
     average-pooled features at every cut point in one pass (``features.collect_features``)
     for all labelled images (the fit's train and val splits together) and for the test
     images. Per cut: ``make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))``,
     C from 10^-3..10^2 by 5-fold stratified CV on the labelled images, refit on them
     all, test accuracy. Reported: ``lr_at_fit_cut`` (the cut the fit chose),
     ``lr_best_cut_by_cv`` (the cut with the best CV accuracy; ties go to the lower cut)
     and ``lr_best_cut_oracle`` (the best test accuracy over cuts: not a fair
     baseline, a ceiling for choosing a cut).
  3. raw-pixel lr: the same pipeline and C search on the PNGs as grayscale pixel
     vectors at their own size (28x28 Fashion-MNIST, 8x8 digits).

Prints progress lines to stderr and the JSON to stdout (and writes it with --out): per
dataset, per seed, all numbers; means over seeds; an ``acceptance`` block (per small
dataset: mean fit accuracy >= each baseline's mean, slowest fit < 60 s; with --large:
fit test accuracy >= 0.855). ``measured_code`` records which transferkit was imported,
so the same script measures old and new code (``--label`` names the run):

    PYTHONPATH=src .venv/bin/python bench/small_data.py --large --label before \\
        --out bench/results/small_data_before.json

Quick smoke run: ``--datasets digits --seeds 0``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import command_line, emit

SMALL = {  # name -> (training images per class, test images)
    "fashion-mnist": (10, 1000),
    "digits": (20, 500),
}
LARGE = ("fashion-mnist", 100, 2000, 0)  # name, per class, test, seed
LARGE_MIN_ACCURACY = 0.855
MAX_FIT_SECONDS = 60.0
C_GRID = [10.0**k for k in range(-3, 3)]
CV_FOLDS = 5
THREADS = torch.get_num_threads()  # each fit starts with the same
BASELINES = ("lr_at_fit_cut", "lr_best_cut_by_cv", "lr_best_cut_oracle", "raw_pixel_lr")


def say(*parts) -> None:
    print("small_data:", *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- fit
def cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader workers): less
    sensitive than wall time to other jobs on a shared machine."""
    gc.collect()  # finalise dropped loaders, so their workers exit and are counted
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_fit(data_dir: Path, work: Path, seed: int, **settings) -> tuple[dict, object]:
    """transferkit's default fit (``settings`` changed), cold: fresh feature cache and
    cache root."""
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(work / "tk-cache")
    from transferkit.estimator import TransferClassifier

    load_start, cpu_start, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    clf = TransferClassifier(seed=seed, cache_dir=str(work / "tk-features"), **settings)
    clf.fit(data_dir, run_dir=work / "tk-run", overwrite=True)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu_start
    m = clf.metrics_
    fit = {
        "test_accuracy": m["test_accuracy"],
        "val_accuracy": m.get("val_accuracy"),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "strategy": m.get("strategy"),
        "cut": m.get("cut", clf.config_.cut),
        "image_size": clf.config_.image_size,
        "backbone": clf.config_.backbone,
        "n_train": m.get("n_train"),
        "n_val": m.get("n_val"),
        "n_test": m.get("n_test"),
        "phases": [
            {k: p.get(k) for k in ("name", "epochs_run", "best_epoch", "seconds")}
            for p in m.get("phases", [])
        ],
        "decision": (m.get("decision") or {}).get("reason"),
    }
    return fit, clf.config_


def holdout_fit(name: str, per_class: int, seed: int, root: Path) -> dict:
    """The same data fitted with ``selection="holdout"`` (no cross-validated head:
    the epoch-trained head on the held-out split, as before it existed), cold, right
    after the default fit: the time baseline for the 1.2x limit, in one run."""
    work = root / f"{name}-{per_class}-seed{seed}"
    shutil.rmtree(work / "tk-features", ignore_errors=True)
    shutil.rmtree(work / "tk-cache", ignore_errors=True)
    tag = f"[{name} {per_class}/class seed {seed}]"
    say(f"{tag} holdout fit ...")
    fit, _ = run_fit(work / "data", work, seed, selection="holdout")
    say(f"{tag} holdout fit: test {fit['test_accuracy']:.4f}, {fit['seconds']:.1f} s")
    return fit


# ------------------------------------------------------------------ baselines
def labelled_and_test(data_dir: Path, work: Path, seed: int):
    """The fit's train and val splits together, and its test split (same loading,
    split fraction and seed; scanned with a verdict cache of its own)."""
    from transferkit.data import ScanOptions, load_data

    splits = load_data(
        data_dir, val_split=0.2, seed=seed, scan=ScanOptions(cache_dir=str(work / "bench-scan"))
    )
    return list(splits.train) + list(splits.val), list(splits.test)


def cut_features(config, image_size: int, examples, extra_cut: str | None) -> dict:
    """``{cut: (N, C)}`` globally average-pooled features at every cut point of the
    uncut backbone (and at ``extra_cut``, when it is not one), in one pass."""
    from transferkit.advisor.measure import eval_loader
    from transferkit.backbones import create_backbone
    from transferkit.features import collect_features

    backbone = create_backbone(config.backbone, weights=config.weights)
    cuts = list(dict.fromkeys([*backbone.cut_points, *([extra_cut] if extra_cut else [])]))
    loader = eval_loader(backbone, examples, image_size)
    return collect_features(backbone, loader, cuts=cuts, representation="avg")


def pixel_vectors(examples) -> np.ndarray:
    """Each image as grayscale pixels at its own size, one row per image."""
    from PIL import Image

    rows = []
    for e in examples:
        with Image.open(e.path) as im:
            rows.append(np.asarray(im.convert("L"), dtype=np.float32).ravel())
    return np.stack(rows)


def scaled_lr(x_train, y_train, x_test, y_test, seed: int) -> dict:
    """StandardScaler + LogisticRegression, C by stratified k-fold CV on the
    training rows, refit on all of them; the test accuracy."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        {"logisticregression__C": C_GRID},
        cv=StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed),
        scoring="accuracy",
    )
    # One BLAS thread: after torch's OpenMP pool has run, BLAS threads contend with it
    # and these small fits run about 8x slower.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always", ConvergenceWarning)
        search.fit(x_train, y_train)
        test_accuracy = float(search.score(x_test, y_test))
    return {
        "cv_accuracy": float(search.best_score_),
        "C": search.best_params_["logisticregression__C"],
        "test_accuracy": test_accuracy,
        "n_features": int(x_train.shape[1]),
        "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught),
    }


def lr_per_cut(labelled, test, config, fit_cut: str | None, seed: int, tag: str) -> dict:
    """Scaled LR on pooled features at every cut, and the summaries over cuts."""
    t0 = time.perf_counter()
    parts = fit_cut.split("+") if fit_cut else []
    extra = fit_cut if len(parts) == 1 else None  # a joined cut: its layers are cut points
    train_feats = cut_features(config, config.image_size, labelled, extra)
    test_feats = cut_features(config, config.image_size, test, extra)
    extract_seconds = time.perf_counter() - t0
    y_train = np.array([e.label for e in labelled])
    y_test = np.array([e.label for e in test])
    per_cut = {}
    for cut, x in train_feats.items():
        per_cut[cut] = scaled_lr(x, y_train, test_feats[cut], y_test, seed)
        say(
            f"{tag} lr at {cut}: test {per_cut[cut]['test_accuracy']:.4f}, "
            f"cv {per_cut[cut]['cv_accuracy']:.4f}, C {per_cut[cut]['C']:g}"
        )
    by_cv = max(per_cut, key=lambda c: per_cut[c]["cv_accuracy"])  # first max: lower cut
    oracle = max(per_cut, key=lambda c: per_cut[c]["test_accuracy"])
    at_fit = per_cut[fit_cut]["test_accuracy"] if fit_cut in per_cut else None
    if len(parts) > 1:  # the same LR on the joined features the fit read
        joined = [np.concatenate([f[p] for p in parts], axis=1) for f in (train_feats, test_feats)]
        at_fit = scaled_lr(joined[0], y_train, joined[1], y_test, seed)["test_accuracy"]
    return {
        "lr_per_cut": per_cut,
        "lr_at_fit_cut": at_fit,
        "lr_best_cut_by_cv": {"cut": by_cv, **_acc(per_cut[by_cv])},
        "lr_best_cut_oracle": {"cut": oracle, **_acc(per_cut[oracle])},
        "feature_seconds": extract_seconds,
        "lr_seconds": time.perf_counter() - t0 - extract_seconds,
    }


def _acc(r: dict) -> dict:
    return {"test_accuracy": r["test_accuracy"], "cv_accuracy": r["cv_accuracy"]}


# ------------------------------------------------------------------- one run
def run_one(name: str, per_class: int, test: int, seed: int, root: Path, *, baselines: bool):
    from transferkit.data import write_dataset

    tag = f"[{name} {per_class}/class seed {seed}]"
    work = root / f"{name}-{per_class}-seed{seed}"
    data_dir = work / "data"
    write_dataset(name, data_dir, per_class=per_class, test=test, seed=seed)
    torch.set_num_threads(THREADS)  # every run starts the same
    say(f"{tag} fit ...")
    fit, config = run_fit(data_dir, work, seed)
    say(
        f"{tag} fit: test {fit['test_accuracy']:.4f}, {fit['strategy']} at {fit['cut']}, "
        f"{fit['image_size']} px, {fit['seconds']:.1f} s"
    )
    result = {"seed": seed, "per_class": per_class, "test": test, "fit": fit}
    if not baselines:
        return result
    labelled, test_examples = labelled_and_test(data_dir, work, seed)
    result["n_labelled"], result["n_test"] = len(labelled), len(test_examples)
    result.update(lr_per_cut(labelled, test_examples, config, fit["cut"], seed, tag))
    y_train = np.array([e.label for e in labelled])
    y_test = np.array([e.label for e in test_examples])
    raw = scaled_lr(pixel_vectors(labelled), y_train, pixel_vectors(test_examples), y_test, seed)
    result["raw_pixel_lr"] = raw
    say(
        f"{tag} lr by cv {result['lr_best_cut_by_cv']['test_accuracy']:.4f} "
        f"({result['lr_best_cut_by_cv']['cut']}), oracle "
        f"{result['lr_best_cut_oracle']['test_accuracy']:.4f}, raw pixels "
        f"{raw['test_accuracy']:.4f}"
    )
    return result


# ------------------------------------------------------------------- summary
def baseline_accuracy(run: dict, key: str) -> float | None:
    value = run.get(key)
    return value.get("test_accuracy") if isinstance(value, dict) else value


def means(runs: list[dict]) -> dict:
    """Means over seeds (and the spread of the fit's accuracy, and its slowest run)."""
    fit_acc = [r["fit"]["test_accuracy"] for r in runs]
    out = {
        "fit": statistics.fmean(fit_acc),
        "fit_stdev": statistics.stdev(fit_acc) if len(fit_acc) > 1 else 0.0,
        "fit_seconds_mean": statistics.fmean(r["fit"]["seconds"] for r in runs),
        "fit_seconds_max": max(r["fit"]["seconds"] for r in runs),
        "fit_cpu_seconds_mean": statistics.fmean(r["fit"]["cpu_seconds"] for r in runs),
    }
    for key in BASELINES:
        values = [baseline_accuracy(r, key) for r in runs]
        if all(v is not None for v in values):
            out[key] = statistics.fmean(values)
    return out


def acceptance(results: dict) -> dict:
    checks: dict = {}
    for name, ds in results.items():
        m = ds["mean"]
        if ds.get("large"):
            checks[f"{name}: fit test accuracy >= {LARGE_MIN_ACCURACY}"] = bool(
                m["fit"] >= LARGE_MIN_ACCURACY
            )
            ratio = ds["runs"][0].get("seconds_ratio_to_holdout")
            if ratio is not None:
                checks[f"{name}: fit seconds <= 1.2x the holdout fit's"] = bool(ratio <= 1.2)
            continue
        for key in ("lr_best_cut_by_cv", "lr_best_cut_oracle", "raw_pixel_lr"):
            if key in m:
                checks[f"{name}: mean(fit) >= mean({key})"] = bool(m["fit"] >= m[key])
        checks[f"{name}: max fit seconds < {MAX_FIT_SECONDS:g}"] = bool(
            m["fit_seconds_max"] < MAX_FIT_SECONDS
        )
    checks["all"] = all(checks.values())
    return checks


def measured_code() -> dict:
    """Which transferkit ran: its folder and that folder's git commit (+dirty)."""
    import transferkit

    folder = Path(transferkit.__file__).resolve().parent

    def git(*a):
        return subprocess.run(
            ["git", "-C", str(folder), *a], capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {
        "path": str(folder),
        "version": getattr(transferkit, "__version__", None),
        "commit": (head + ("+dirty" if dirty else "")) or None,
    }


def machine_facts(load_start: float) -> dict:
    import sklearn

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": THREADS,
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
    }


# ---------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default=",".join(SMALL), help="comma-separated small datasets")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--large", action="store_true", help="also Fashion-MNIST 100/class, seed 0")
    p.add_argument("--label", default="", help="a name for this run, recorded in the JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary data and runs")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    unknown = sorted(set(args.datasets) - set(SMALL))
    if unknown:
        p.error(f"--datasets: unknown {unknown[0]!r}; options: {', '.join(SMALL)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    load_start = round(os.getloadavg()[0], 2)
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    root = Path(tempfile.mkdtemp(prefix="tk-small-data-"))
    results: dict = {}
    try:
        for name in args.datasets:
            per_class, test = SMALL[name]
            runs = [run_one(name, per_class, test, s, root, baselines=True) for s in args.seeds]
            results[f"{name}-{per_class}"] = {"per_class": per_class, "test": test, "runs": runs}
        if args.large:
            name, per_class, test, seed = LARGE
            run = run_one(name, per_class, test, seed, root, baselines=False)
            run["holdout"] = holdout_fit(name, per_class, seed, root)
            run["seconds_ratio_to_holdout"] = run["fit"]["seconds"] / run["holdout"]["seconds"]
            results[f"{name}-{per_class}"] = {
                "per_class": per_class,
                "test": test,
                "large": True,
                "runs": [run],
            }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for ds in results.values():
        ds["mean"] = means(ds["runs"])
    summary = {
        "benchmark": "small_data",
        "label": args.label,
        "measured_code": measured_code(),
        "command": command_line("bench/small_data.py", argv),
        "config": {
            "seeds": args.seeds,
            "datasets": args.datasets,
            "large": args.large,
            "c_grid": C_GRID,
            "cv_folds": CV_FOLDS,
        },
        "machine": machine_facts(load_start),
        "results": results,
        "acceptance": acceptance(results),
    }
    emit(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
