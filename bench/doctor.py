"""Benchmark: does the data doctor find planted mislabels and train/test leaks, and how
fast is it on warm features?

One run, seed 0 (it picks the images, the flipped labels, the planted copies and the
cross-validation folds):

  1. Fashion-MNIST, 100 training images per class (10 classes) and 200 test images,
     written as PNG class folders (``transferkit.data.write_dataset``).
  2. clean: ``diagnose`` with efficientnet_lite0 and its built-in weights (features
     extracted into a fresh cache). Every duplicate group found there is counted as
     false (Fashion-MNIST may hold true duplicates; they count against us):
     ``false_duplicate_rate`` = images in a group / images.
  3. planted, on a copy of the clean folder: 5% of the training images (50) moved to
     another class's folder, chosen at random (their true class is known), and 20 copies
     of test images put into train/ under the test image's class: 5 exact copies, 5
     resized (28 -> 36 px, bicubic), 5 re-compressed as JPEG (quality 70), 5 cropped by
     5% of each side's length (from a random corner, saved at the cropped size).
     ``diagnose`` again: precision and recall of the suspects at N and 2N (N = 50
     flipped), whether each planted copy is in a duplicate group flagged as a leak with
     its test original, and the groups with no planted copy in them (false).
  4. warm: ``diagnose`` once more on the planted folder, every feature in the cache:
     its wall seconds (the acceptance: under 10 s on 2 cores for >= 1,000 images).
  5. the leak check ``fit`` runs (thumbnails only, no features) on the loaded clean
     and planted data: the planted copies it flags, the groups on the clean data, and
     its seconds (best of 3) on the planted data and on the demo's data (``make
     demo``: Fashion-MNIST 30 per class, 300 test).

Run: ``python bench/doctor.py --out bench/results/doctor.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, emit, git_state

SEED, PER_CLASS, TEST, FLIP, COPIES = 0, 100, 200, 0.05, 20
BACKBONE = "efficientnet_lite0"


def say(*parts) -> None:
    print("[doctor bench]", *parts, file=sys.stderr, flush=True)


def flip_labels(root: Path, rng) -> dict[str, str]:
    """Move FLIP of the training images to another class's folder: new rel path -> true class."""
    files = sorted((root / "train").glob("*/*.png"))
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    chosen = rng.choice(len(files), round(FLIP * len(files)), replace=False)
    flipped = {}
    for i in sorted(chosen):
        f = files[i]
        true = f.parent.name
        wrong = rng.choice([c for c in classes if c != true])
        dest = root / "train" / wrong / f"flipped_{f.name}"
        f.rename(dest)
        flipped[str(dest.relative_to(root))] = true
    return flipped


def plant_copies(root: Path, rng) -> dict[str, str]:
    """COPIES copies of test images in train/: new rel path -> the test original's rel path."""
    from PIL import Image

    tests = sorted((root / "test").glob("*/*.png"))
    chosen = rng.choice(len(tests), COPIES, replace=False)
    planted = {}
    for n, i in enumerate(chosen):
        src = tests[i]
        kind = ("exact", "resized", "jpeg", "cropped")[n % 4]
        dest_dir = root / "train" / src.parent.name
        img = Image.open(src)
        if kind == "exact":
            dest = dest_dir / f"planted_{n}_exact.png"
            shutil.copyfile(src, dest)
        elif kind == "resized":
            dest = dest_dir / f"planted_{n}_resized.png"
            img.resize((36, 36), Image.Resampling.BICUBIC).save(dest)
        elif kind == "jpeg":
            dest = dest_dir / f"planted_{n}_jpeg.jpg"
            img.convert("L").save(dest, quality=70)
        else:
            dest = dest_dir / f"planted_{n}_cropped.png"
            w, h = img.size
            dx, dy = round(0.05 * w), round(0.05 * h)
            x0, y0 = int(rng.integers(0, 2)) * dx, int(rng.integers(0, 2)) * dy
            img.crop((x0, y0, x0 + w - dx, y0 + h - dy)).save(dest)
        planted[str(dest.relative_to(root))] = str(src.relative_to(root))
    return planted


def mislabel_scores(report, flipped: dict[str, str]) -> dict:
    ranked = [m["path"] for m in report.suspected_mislabels]
    n = len(flipped)
    out = {"flipped": n, "suspects": len(ranked)}
    for name, k in (("N", n), ("2N", 2 * n)):
        hits = sum(1 for p in ranked[:k] if p in flipped)
        out[f"precision_at_{name}"] = round(hits / max(1, min(k, len(ranked))), 4)
        out[f"recall_at_{name}"] = round(hits / n, 4)
    right = [m for m in report.suspected_mislabels[: 2 * n] if m["path"] in flipped]
    out["suggested_true_class"] = round(
        sum(1 for m in right if m["suggested"] == flipped[m["path"]]) / max(1, len(right)), 4
    )
    return out


def leak_scores(report, planted: dict[str, str]) -> dict:
    found = {}
    for copy, original in planted.items():
        group = next((g for g in report.duplicate_groups if copy in g["paths"]), None)
        found[copy] = bool(group and group["leak"] and original in group["paths"])
    false_groups = [g for g in report.duplicate_groups if not any(p in planted for p in g["paths"])]
    by_kind: dict[str, list[bool]] = {}
    for copy, ok in found.items():
        by_kind.setdefault(copy.rsplit("_", 1)[-1].split(".")[0], []).append(ok)
    return {
        "planted": len(planted),
        "found_as_leaks": sum(found.values()),
        "by_kind": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_kind.items())},
        "missed": sorted(c for c, ok in found.items() if not ok),
        "groups_without_a_planted_copy": len(false_groups),
        "false_groups": [g["paths"] for g in false_groups][:10],
    }


def false_duplicates(report) -> dict:
    images = report.summary["images"]
    in_groups = sum(len(g["paths"]) for g in report.duplicate_groups)
    return {
        "images": images,
        "groups": len(report.duplicate_groups),
        "images_in_groups": in_groups,
        "false_duplicate_rate": round(in_groups / max(1, images), 5),
        "groups_shown": [g["paths"] for g in report.duplicate_groups][:10],
    }


def fit_check(clean: Path, planted_dir: Path, demo: Path, planted: dict[str, str]) -> dict:
    """What ``fit``'s leak check finds and costs (it runs right after loading)."""
    from transferkit.data import load_data
    from transferkit.doctor.leaks import find_leaks

    def best_of_3(data: Path):
        splits = load_data(data)
        seconds = []
        for _ in range(3):
            t0 = time.perf_counter()
            groups = find_leaks(splits)
            seconds.append(time.perf_counter() - t0)
        return (
            groups,
            round(min(seconds), 3),
            len(splits.train) + len(splits.val) + len(splits.test),
        )

    clean_groups, _, _ = best_of_3(clean)
    groups, seconds, n = best_of_3(planted_dir)
    demo_groups, demo_seconds, demo_n = best_of_3(demo)
    found = sum(
        1
        for copy, original in planted.items()
        if any(copy in g["paths"] and original in g["paths"] for g in groups)
    )
    return {
        "planted_found": f"{found}/{len(planted)}",
        "clean_leak_groups": len(clean_groups),
        "seconds_planted": seconds,
        "images_planted": n,
        "seconds_demo": demo_seconds,
        "images_demo": demo_n,
        "demo_leak_groups": len(demo_groups),
    }


def timed(data: Path, cache: Path):
    from transferkit.doctor import diagnose

    t0 = time.perf_counter()
    report = diagnose(data, backbone=BACKBONE, seed=SEED, cache_dir=str(cache))
    return report, time.perf_counter() - t0


def run(root: Path) -> dict:
    from transferkit.data import write_dataset

    clean = root / "clean"
    write_dataset("fashion-mnist", clean, per_class=PER_CLASS, test=TEST, seed=SEED)
    cache = root / "features"
    say("clean data: extracting features and diagnosing ...")
    clean_report, clean_cold = timed(clean, cache)
    planted_dir = root / "planted"
    shutil.copytree(clean, planted_dir)
    rng = np.random.default_rng(SEED)
    flipped = flip_labels(planted_dir, rng)
    planted = plant_copies(planted_dir, rng)
    say("planted data: diagnosing (features of the planted copies extracted) ...")
    report, _ = timed(planted_dir, cache)
    say("planted data, warm features: diagnosing ...")
    warm_report, warm = timed(planted_dir, cache)
    say("the fit's leak check ...")
    demo = root / "demo"
    write_dataset("fashion-mnist", demo, per_class=30, test=300, seed=SEED)
    check = fit_check(clean, planted_dir, demo, planted)
    return {
        "clean": {**false_duplicates(clean_report), "seconds_cold": round(clean_cold, 2)},
        "mislabels": mislabel_scores(report, flipped),
        "leaks": leak_scores(report, planted),
        "warm": {
            "images": warm_report.summary["images"],
            "features_extracted": warm_report.summary["extracted"],
            "seconds": round(warm, 3),
            "cv_accuracy": warm_report.summary["cv_accuracy"],
        },
        "fit_leak_check": check,
    }


def acceptance(r: dict) -> dict:
    m, leaks, warm = r["mislabels"], r["leaks"], r["warm"]
    return {
        "top_2N_hold_60pct_of_flipped": {
            "value": m["recall_at_2N"],
            "met": m["recall_at_2N"] >= 0.6,
        },
        "all_planted_copies_found_as_leaks": {
            "value": f"{leaks['found_as_leaks']}/{leaks['planted']}",
            "met": leaks["found_as_leaks"] == leaks["planted"],
        },
        "warm_doctor_under_10s_on_1000_images": {
            "value": warm["seconds"],
            "images": warm["images"],
            "met": warm["seconds"] < 10 and warm["images"] >= 1000,
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = p.parse_args(argv)
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    root = Path(tempfile.mkdtemp(prefix="tk-doctor-bench-"))
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(root / "tk-cache")
    load_start = round(os.getloadavg()[0], 2)
    try:
        results = run(root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    import torch

    emit(
        {
            "benchmark": "doctor",
            "measured_code": git_state(),
            "command": command_line("bench/doctor.py", argv),
            "config": {
                "seed": SEED,
                "dataset": f"fashion-mnist {PER_CLASS}/class, {TEST} test",
                "flipped_fraction": FLIP,
                "planted_copies": COPIES,
                "backbone": BACKBONE,
            },
            "machine": {
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
            },
            "results": results,
            "acceptance": acceptance(results),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
