"""`make demo`: the main job end to end on built-in defaults.

Builds a small Fashion-MNIST folder (Debian's dataset-fashion-mnist), fits with every
default (strategy ``auto``: measured, then trained), and says where the run is and
what to try next.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import main as cli_main

DEMO = Path("demo")
PER_CLASS, TEST = 30, 300


def main() -> int:
    data, run = DEMO / "data", DEMO / "run"
    if not (data / "transferkit-dataset.json").is_file():
        rc = cli_main(
            [
                "datasets",
                "fashion-mnist",
                str(data),
                "--per-class",
                str(PER_CLASS),
                "--test",
                str(TEST),
                "--seed",
                "0",
            ]
        )
        if rc:
            return rc
    print(
        f"transferkit demo: fitting {data} with the defaults (backbone efficientnet_lite0, "
        "strategy auto)"
    )
    again = ["--overwrite"] if (run / "config.json").is_file() else []  # a re-run replaces it
    if again:
        print(f"transferkit demo: {run} holds the last demo run; this one replaces it")
    rc = cli_main(["fit", str(data), "--out", str(run), *again])
    if rc:
        return rc
    metrics = json.loads((run / "metrics.json").read_text())
    print(
        f"\nval accuracy {metrics['val_accuracy']:.3f}, test accuracy "
        f"{metrics.get('test_accuracy', float('nan')):.3f} ({metrics['strategy']} at "
        f"{metrics['cut']}, {metrics['image_size']} px, {metrics['seconds_total']:.0f}s)"
    )
    if metrics.get("decision"):
        print(f"why: {metrics['decision']['reason']}")
    print(f"the run is in {run}/ (report.html, metrics.json, history.csv, model.safetensors)")
    print(
        f"next: transferkit evaluate {run} {data} | transferkit predict {run} "
        f"{data}/test/bag | transferkit export {run} --format onnx --out {DEMO}/model.onnx"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
