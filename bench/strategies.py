"""Benchmark: does ``auto`` pick as well as the best fixed strategy, and at what cost?

Feature-extract, fine-tune top:2, fine-tune all and auto, one after the other on
Fashion-MNIST, N per class (train+val), 2,000 test images, efficientnet_lite0 at
96 px, CPU. Each strategy starts from a cold feature cache so wall times compare.
Prints JSON (and writes it with --out): test accuracy and seconds per strategy,
auto's gap to the best of the three and its time vs their sum.

    .venv/bin/python bench/strategies.py --out bench/results/strategies.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import emit, git_state

from transferkit.data import write_dataset
from transferkit.estimator import TransferClassifier

RUNS = {
    "feature-extract": {"strategy": "feature-extract"},
    "fine-tune top:2": {"strategy": "fine-tune", "unfreeze": "top:2"},
    "fine-tune all": {"strategy": "fine-tune", "unfreeze": "all"},
    "auto": {"strategy": "auto"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(RUNS))
    ap.add_argument("--out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    data = work / "fm"
    write_dataset("fashion-mnist", data, per_class=args.per_class, test=args.test, seed=0)
    results = {}
    names = args.only.split(",") if args.only else list(RUNS)
    for name in names:
        params = RUNS[name]
        t0 = time.perf_counter()
        clf = TransferClassifier(
            args.backbone,
            image_size=args.image_size,
            cache_dir=str(work / f"cache-{name}"),
            **params,
        )
        clf.fit(data, run_dir=work / "runs" / name.replace(" ", "_").replace(":", ""))
        m = clf.metrics_
        results[name] = {
            "test_accuracy": m.get("test_accuracy"),
            "val_accuracy": m.get("val_accuracy"),
            "seconds": time.perf_counter() - t0,
            "cut": m["cut"],
            "strategy": m["strategy"],
            "phases": [
                {k: p[k] for k in ("name", "epochs_run", "best_epoch", "seconds")}
                for p in m["phases"]
            ],
            "decision": (m.get("decision") or {}).get("reason"),
        }
        print(json.dumps({name: results[name]}), flush=True)
    summary = {
        "benchmark": "strategies",
        "transferkit_commit": git_state(),
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "config": vars(args),
        "results": results,
    }
    others = [r for n, r in results.items() if n != "auto"]
    if "auto" in results and others:
        best = max(r["test_accuracy"] for r in others)
        summary["auto_minus_best_points"] = 100 * (results["auto"]["test_accuracy"] - best)
        summary["auto_seconds_vs_sum_of_others"] = results["auto"]["seconds"] / sum(
            r["seconds"] for r in others
        )
    emit(summary, args.out)


if __name__ == "__main__":
    main()
