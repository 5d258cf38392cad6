"""Benchmark: how far to trust a run's predictions, on real data, in one run.

Data: Fashion-MNIST with its first 6 classes (t-shirt/top, trouser, pullover, dress,
coat, sandal), 100 training images per class and 200 test images per class (1,200),
from the Debian package dataset-fashion-mnist; unknown images: 1,000 of
scikit-learn's 8x8 digits upscaled to 28x28 grayscale (white on black, like
Fashion-MNIST), and 1,000 test images of the 4 held-out Fashion-MNIST classes
(shirt, sneaker, bag, ankle boot: near, not far, from the known ones).

One fit with every setting at its default (efficientnet_lite0 with its built-in
weights), then:

  1. ``evaluate_run(run, data, ood=...)`` for each unknown set: test ECE before and
     after calibration, coverage and mean size of the 0.9 prediction sets, the OOD
     score's AUROC and the share of unknown images called unknown;
  2. every candidate OOD score (``trust.ood.METHODS``) from the run's logits and
     pooled features (statistics from the run's labelled images), its AUROC against
     each unknown set: the measurement the run's choice rests on;
  3. the run exported to ONNX: max |probability difference| against ``predict`` on the
     test images;
  4. the same fit with ``tta=True``: the test-time augmentation decision, its
     validation numbers, and the test accuracy with it (not part of the acceptance).

Writes the JSON (with an ``acceptance`` block of ``met`` flags) to stdout and --out:

    PYTHONPATH=src .venv/bin/python bench/trust.py --out bench/results/trust.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import command_line, emit, git_state
from PIL import Image

KNOWN = 6
PER_CLASS, TEST_PER_CLASS, UNKNOWN_IMAGES = 100, 200, 1000


def say(*parts) -> None:
    print("trust:", *parts, file=sys.stderr, flush=True)


def write_images(folder: Path, images, labels=None, names=None) -> None:
    for i, image in enumerate(images):
        sub = folder if labels is None else folder / names[int(labels[i])]
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i:05d}.png")


def make_data(root: Path, seed: int) -> dict:
    from transferkit.data.datasets import FASHION_MNIST_CLASSES, _digits, _fashion_mnist

    (train_x, train_y), (test_x, test_y), _ = _fashion_mnist()
    rng = np.random.default_rng(seed)
    names = FASHION_MNIST_CLASSES

    def pick(labels, classes, per_class):
        return np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
        )

    known = range(KNOWN)
    tr, te = pick(train_y, known, PER_CLASS), pick(test_y, known, TEST_PER_CLASS)
    write_images(root / "data" / "train", train_x[tr], train_y[tr], names)
    write_images(root / "data" / "test", test_x[te], test_y[te], names)
    held = pick(test_y, range(KNOWN, 10), UNKNOWN_IMAGES // (10 - KNOWN))
    write_images(root / "fm_heldout", test_x[held])
    digits, _, _ = _digits()
    chosen = rng.choice(len(digits), UNKNOWN_IMAGES, replace=False)
    upscaled = [
        np.asarray(Image.fromarray(d).resize((28, 28), Image.BILINEAR)) for d in digits[chosen]
    ]
    write_images(root / "digits", upscaled)
    return {
        "data": root / "data",
        "digits": root / "digits",
        "fm_heldout": root / "fm_heldout",
        "known_classes": names[:KNOWN],
        "heldout_classes": names[KNOWN:],
    }


def outputs(predictor, paths: list[str]):
    """Calibrated logits and pooled features of image files, in batches."""
    from transferkit.data import open_image

    logits, feats = [], []
    for i in range(0, len(paths), 128):
        pixels = np.stack(
            [
                predictor._pixels(open_image(p, channels=predictor.channels, side=predictor.side))
                for p in paths[i : i + 128]
            ]
        )
        z, f = predictor.outputs_fn(pixels)
        logits.append(z)
        feats.append(f)
    return np.concatenate(logits), np.concatenate(feats)


def files(folder: Path) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*.png"))


def candidates(run: Path, sets: dict) -> dict:
    """AUROC of every OOD score, test images against each unknown set."""
    from transferkit.predict import load_predictor
    from transferkit.trust.ood import FEATURE_METHODS, METHODS, auroc, fit_feature_stats, ood_scores

    predictor = load_predictor(run)
    train = files(sets["data"] / "train")
    labels = [predictor.classes.index(Path(p).parent.name) for p in train]
    _, train_f = outputs(predictor, train)
    out = {
        name: outputs(predictor, files(folder)) for name, folder in sets.items() if name != "data"
    }
    test = outputs(predictor, files(sets["data"] / "test"))
    table = {}
    for method in METHODS:
        stats = (
            fit_feature_stats(train_f, labels, KNOWN, method) if method in FEATURE_METHODS else {}
        )
        known = ood_scores(method, *test, stats)
        table[method] = {
            name: auroc(known, ood_scores(method, *o, stats)) for name, o in out.items()
        }
        say(method, {k: round(v, 4) for k, v in table[method].items()})
    return table


def onnx_check(run: Path, root: Path, data: Path) -> dict:
    from transferkit.export import export_run
    from transferkit.predict import load_predictor

    paths = files(data / "test")
    export_run(run, root / "model.onnx")
    _, p_run, _ = load_predictor(run).predict_proba_files(paths)
    _, p_onnx, _ = load_predictor(root / "model.onnx").predict_proba_files(paths)
    return {"images": len(paths), "max_abs_probability_diff": float(np.abs(p_run - p_onnx).max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    root = Path(tempfile.mkdtemp(prefix="tk-trust-"))
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(root / "tk-cache")
    try:
        result = measure(root, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result["command"] = command_line("bench/trust.py", argv)
    emit(result, args.out)
    return 0


def measure(root: Path, seed: int) -> dict:
    from transferkit.estimator import TransferClassifier
    from transferkit.evaluation import evaluate_run

    sets = make_data(root, seed)
    say("fit ...")
    t0 = time.perf_counter()
    clf = TransferClassifier(seed=seed, cache_dir=str(root / "tk-features"), verbose=False)
    clf.fit(sets["data"], run_dir=root / "run")
    fit_seconds = time.perf_counter() - t0
    run = root / "run"
    evaluations = {}
    for name in ("digits", "fm_heldout"):
        say(f"evaluate --ood {name} ...")
        evaluations[name] = evaluate_run(run, sets["data"], ood=sets[name]).to_dict()
    say("candidate OOD scores ...")
    table = candidates(run, {k: sets[k] for k in ("data", "digits", "fm_heldout")})
    say("onnx ...")
    onnx = onnx_check(run, root, sets["data"])
    say("fit with tta ...")
    tta = TransferClassifier(
        seed=seed, cache_dir=str(root / "tk-features"), verbose=False, tta=True
    )
    tta.fit(sets["data"], run_dir=root / "run-tta")
    tta_metrics = json.loads((root / "run-tta" / "metrics.json").read_text())
    ev = evaluations["digits"]
    fields = (
        "accuracy", "ece", "ece_uncalibrated", "temperature", "coverage", "mean_set_size",
        "unknown_share", "ood_auroc", "ood_unknown_share", "ood_images",
    )  # fmt: skip
    m = json.loads((run / "metrics.json").read_text())
    return {
        "benchmark": "trust",
        "measured_code": git_state(),
        "data": {
            "known_classes": sets["known_classes"],
            "heldout_classes": sets["heldout_classes"],
            "train_per_class": PER_CLASS,
            "test_images": KNOWN * TEST_PER_CLASS,
            "unknown_images": UNKNOWN_IMAGES,
            "seed": seed,
        },
        "fit": {
            "seconds": fit_seconds,
            "strategy": m.get("strategy"),
            "cut": m.get("cut"),
            "image_size": m.get("image_size"),
            "n_train": m.get("n_train"),
            "n_val": m.get("n_val"),
            "ood_method": m.get("ood_method"),
            "ood_threshold": m.get("ood_threshold"),
            "conformal_quantile": m.get("conformal_quantile"),
            "trust_source": m.get("trust_source"),
        },
        "evaluate": {name: {k: e.get(k) for k in fields} for name, e in evaluations.items()},
        "ood_candidates_auroc": table,
        "onnx": onnx,
        "tta": {
            "record": tta_metrics.get("tta"),
            "test_accuracy": {
                "without": m.get("test_accuracy"),
                "with": tta_metrics.get("test_accuracy"),
            },
        },
        "acceptance": acceptance(ev, evaluations["fm_heldout"], onnx),
    }


def acceptance(ev: dict, held: dict, onnx: dict) -> dict:
    def check(value, ok):
        return {"value": value, "met": bool(value is not None and ok(value))}

    return {
        "ece_at_most_0.03": check(ev["ece"], lambda v: v <= 0.03),
        "ece_below_uncalibrated": check(ev["ece"], lambda v: v < ev["ece_uncalibrated"]),
        "coverage_in_0.88_0.93": check(ev["coverage"], lambda v: 0.88 <= v <= 0.93),
        "test_images_at_least_1000": check(KNOWN * TEST_PER_CLASS, lambda v: v >= 1000),
        "ood_auroc_digits_at_least_0.85": check(ev["ood_auroc"], lambda v: v >= 0.85),
        "ood_auroc_fm_heldout_stated": {"value": held["ood_auroc"], "met": True},
        "onnx_max_abs_diff_at_most_1e-4": check(
            onnx["max_abs_probability_diff"], lambda v: v <= 1e-4
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
