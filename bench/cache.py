"""Benchmark: how much faster is ``fit --strategy feature-extract`` with a warm feature cache?

On a Fashion-MNIST demo dataset (train + test PNGs), in one run:

  - cli: ``transferkit fit DATA --out RUN --strategy feature-extract --image-size S
    --cache-dir X`` as a subprocess, wall time of the whole command (Python start-up
    and imports included: what a user waits for). Cold: X and the transferkit cache
    root (scan verdicts) are fresh folders. Warm: the same command again with the same
    X and cache root, into a new run folder (``--warm-runs`` times, median).
  - api: ``TransferClassifier(strategy="feature-extract", image_size=S,
    cache_dir=Y).fit(DATA, run_dir=...)`` in this process, timing only ``fit`` (after
    a throw-away fit on a tiny dataset has paid the one-off imports), cold then warm.

Variants: ``measured_cut`` is the command above as written (no ``--cut``:
feature-extract measures the best cut with a pass of the training images through the
backbone, every run); ``fixed_cut`` adds ``--cut C`` with the cut the measured run
chose, so no measuring pass runs; api only, ``fixed_cut_no_run_dir`` also leaves out
``run_dir`` (no run folder, plots or HTML report written): the cache and the head.

The baseline is the cold run; ``cold_over_warm`` is how many times faster warm is
(target: >= 20). Each warm run must have been served every feature from the cache,
extracting none (checked).
Prints JSON (and writes it with --out).

    .venv/bin/python bench/cache.py --out bench/results/cache.json

``--scan REV`` measures instead what content keys cost the data scan: a folder of
``--scan-images`` JPEGs is scanned warm (every verdict cached) by this source tree and
by ``src/`` of git revision REV, in alternating subprocesses (``--scan-rounds`` each,
median of ``--scan-repeats`` warm scans per subprocess); ``warm_ratio`` is this
tree's warm scan time over REV's.

    .venv/bin/python bench/cache.py --scan c6ba26d --out bench/results/scan_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import command_line, emit, git_state


def transferkit_command() -> list[str]:
    exe = Path(sys.executable).with_name("transferkit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "transferkit"]


def cli_fit(data: Path, out: Path, cache: Path, root: Path, image_size: int, cut=None) -> dict:
    cmd = [
        *transferkit_command(),
        "fit",
        str(data),
        "--out",
        str(out),
        "--strategy",
        "feature-extract",
        "--image-size",
        str(image_size),
        "--cache-dir",
        str(cache),
        "--json",
        *(["--cut", cut] if cut else []),
    ]
    env = dict(os.environ, TRANSFERKIT_CACHE_DIR=str(root), TRANSFERKIT_PROGRESS="0")
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    metrics = json.loads(proc.stdout)
    return _summary(metrics, seconds)


def api_fit(data: Path, out: Path | None, cache: Path, image_size: int, cut=None) -> dict:
    from transferkit.estimator import TransferClassifier

    clf = TransferClassifier(
        strategy="feature-extract", image_size=image_size, cache_dir=str(cache), cut=cut
    )
    start = time.perf_counter()
    clf.fit(data, run_dir=out)
    return _summary(clf.metrics_, time.perf_counter() - start)


def _summary(metrics: dict, seconds: float) -> dict:
    return {
        "seconds": seconds,
        "feature_cache": metrics["feature_cache"],
        "test_accuracy": metrics.get("test_accuracy"),
        "cut": metrics["cut"],
        "cut_measuring_seconds": (metrics.get("decision") or {}).get("seconds"),
        "head_seconds": sum(p["seconds"] for p in metrics["phases"]),
    }


def cold_warm(run, warm_runs: int) -> dict:
    """``run(i)`` fits once; the first call is cold, the next ``warm_runs`` warm."""
    cold = run(0)
    warm = [run(i + 1) for i in range(warm_runs)]
    asked = cold["feature_cache"]["hits"] + cold["feature_cache"]["extracted"]
    for w in warm:
        if w["feature_cache"]["extracted"] != 0 or w["feature_cache"]["hits"] != asked:
            raise RuntimeError(f"a warm run was not served from the cache: {w}")
    warm_s = statistics.median(w["seconds"] for w in warm)
    return {
        "cold": cold,
        "warm": warm,
        "cold_seconds": round(cold["seconds"], 3),
        "warm_seconds_median": round(warm_s, 3),
        "cold_over_warm": round(cold["seconds"] / warm_s, 2),
    }


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a daemon thread: on a
    shared machine it tells a quiet run from one that competed with other jobs."""

    def __init__(self, every: float = 10.0):
        self.samples = [round(os.getloadavg()[0], 2)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(round(os.getloadavg()[0], 2))

    def stop(self) -> dict:
        self._stop.set()
        self.samples.append(round(os.getloadavg()[0], 2))
        s = self.samples
        return {"start": s[0], "end": s[-1], "max": max(s), "every_10s": s}


def variant_command(mode: str, image_size: int, cut: str | None, save: bool = True) -> str:
    extra = f" --cut {cut}" if cut else ""
    if mode == "cli":
        return (
            f"transferkit fit DATA --out RUN --strategy feature-extract "
            f"--image-size {image_size} --cache-dir X{extra}"
        )
    arg = f", cut={cut!r}" if cut else ""
    return (
        f"TransferClassifier(strategy='feature-extract', image_size={image_size}, "
        f"cache_dir=X{arg}).fit(DATA{', run_dir=RUN' if save else ''})"
    )


SCAN = """
import json, statistics, sys, time
from transferkit.data.scanning import ScanOptions, verify_files, walk_class_folder

root, cache, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
classes = [f"{root}/{c}" for c in sorted(__import__("os").listdir(root))]

def scan():
    found = []
    for folder in classes:
        label = folder.rsplit("/", 1)[1]
        found += walk_class_folder(folder, label=label, split="train", root=root, skipped=[])
    return verify_files(found, root=root, options=ScanOptions(cache_dir=cache))

scan()  # cold: fills the cache
times = []
for _ in range(repeats):
    start = time.perf_counter()
    result = scan()
    times.append(time.perf_counter() - start)
    assert result.cache_misses == 0 and len(result.files) > 0, "not a warm scan"
print(json.dumps({"warm_seconds": statistics.median(times), "files": len(result.files)}))
"""


def jpeg_folder(root: Path, n: int, side: int = 256) -> int:
    """``n`` noisy JPEGs (quality 90) in 3 class folders; returns their total bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, 3).astype(np.float32)
        pixels = (base + rng.normal(0, 30, (side, side, 3))).clip(0, 255).astype("uint8")
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def source_tree(rev: str, dest: Path) -> Path:
    """``src/`` of git revision ``rev``, unpacked under ``dest``."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def timed_scan(src: Path, data: Path, cache: Path, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", SCAN, str(data), str(cache), str(repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"scan with {src} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def scan_main(args) -> int:
    """Warm scan time of this tree over revision ``args.scan``'s, one folder, one run."""
    work = Path(tempfile.mkdtemp(prefix="tk-scan-bench-"))
    data_bytes = jpeg_folder(work / "data", args.scan_images)
    trees = {"before": source_tree(args.scan, work / "before"), "after": Path("src").resolve()}
    times: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(args.scan_rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            out = timed_scan(
                trees[name], work / "data", work / f"cache-{name}-{r}", args.scan_repeats
            )
            times[name].append(out["warm_seconds"])
    before, after = (statistics.median(times[k]) for k in ("before", "after"))
    summary = {
        "benchmark": "scan_cache",
        "transferkit_commit": git_state(),
        "baseline_rev": args.scan,
        "command": command_line("bench/cache.py", None),
        "data": {
            "jpegs": args.scan_images,
            "mean_kib": round(data_bytes / args.scan_images / 1024, 1),
        },
        "machine": {"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)},
        "warm_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "warm_median_seconds": {"before": round(before, 4), "after": round(after, 4)},
        "warm_ratio": round(after / before, 2),
    }
    emit(summary, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--warm-runs", type=int, default=3)
    p.add_argument("--modes", default="cli,api", help="cli, api or both (comma-separated)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--scan", metavar="REV", help="time warm data scans, this tree vs REV")
    p.add_argument("--scan-images", type=int, default=300)
    p.add_argument("--scan-rounds", type=int, default=6)
    p.add_argument("--scan-repeats", type=int, default=5)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.scan:
        return scan_main(args)
    load = LoadSampler()
    work = Path(tempfile.mkdtemp(prefix="tk-cache-bench-"))
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(work / "api-root")
    os.environ["TRANSFERKIT_PROGRESS"] = "0"
    import torch

    from transferkit.data import write_dataset

    data = work / "data"
    write_dataset("fashion-mnist", data, per_class=args.per_class, test=args.test, seed=0)
    modes = args.modes.split(",")
    results = {}
    if "api" in modes:  # pays the one-off imports before anything is timed in-process
        tiny = work / "tiny"
        write_dataset("fashion-mnist", tiny, per_class=3, test=10, seed=1)
        api_fit(tiny, work / "api-warmup", work / "api-warmup-features", args.image_size)
    variants = {
        "cli": ("measured_cut", "fixed_cut"),
        "api": ("measured_cut", "fixed_cut", "fixed_cut_no_run_dir"),
    }
    for mode in ("cli", "api"):
        if mode not in modes:
            continue
        cut = None
        for variant in variants[mode]:
            tag = f"{mode}-{variant}"
            save = variant != "fixed_cut_no_run_dir"

            def run(i, tag=tag, cut=cut, mode=mode, save=save):
                out, features = work / f"{tag}-run-{i}", work / f"{tag}-features"
                if mode == "cli":
                    return cli_fit(data, out, features, work / f"{tag}-root", args.image_size, cut)
                return api_fit(data, out if save else None, features, args.image_size, cut)

            os.environ["TRANSFERKIT_CACHE_DIR"] = str(work / f"{tag}-root")  # api: fresh scan
            load_before = round(os.getloadavg()[0], 2)
            results[tag] = cold_warm(run, args.warm_runs)
            results[tag]["load_average_1min"] = [load_before, round(os.getloadavg()[0], 2)]
            results[tag]["command"] = variant_command(mode, args.image_size, cut, save)
            print(json.dumps({tag: results[tag]["cold_over_warm"]}), file=sys.stderr)
            cut = results[tag]["cold"]["cut"]  # fixed_cut: the cut the measured run chose
    summary = {
        "benchmark": "cache",
        "transferkit_commit": git_state(),
        "command": command_line("bench/cache.py", argv),
        "data": {"dataset": "fashion-mnist", "per_class": args.per_class, "test": args.test},
        "image_size": args.image_size,
        "backbone": "efficientnet_lite0",
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_1min": load.stop(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "results": results,
        "target_cold_over_warm": 20,
        "target_met": {m: bool(r["cold_over_warm"] >= 20) for m, r in results.items()},
    }
    emit(summary, args.out)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
