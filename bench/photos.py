"""Benchmark: phone photos, from files to features, at the size the model needs.

Writes its own folder of synthetic 12 MP JPEGs (4 classes, 3-5 MB each at quality 90,
every 4th stored sideways with an EXIF orientation; bench/_photos_data.py), or reuses
``--folder`` when it already holds them, then measures in one run, each stage in its
own process with an empty transferkit cache (TRANSFERKIT_CACHE_DIR), through the
public API:

  - scan: ``check_data`` (what ``transferkit data check`` runs), cold, then again warm;
  - loader: ``ImageDataset`` + ``create_loader`` with the eval transform at
    ``--image-size``, two passes (first and second), images/s;
  - pipeline: ``FeatureCache(empty folder).get(...)`` from the files, as ``fit``
    extracts features, against the bare forward (``forward_features`` + pooling on
    random tensors at the same size and batch, same compute settings), alternated
    three times and closed by a bare forward; ``pipeline_over_bare_forward`` is the
    ratio of the medians;
  - fine-tune: ``transferkit fit --strategy fine-tune`` (the CLI, in a subprocess);
    per-epoch seconds of the fine-tuning phase from the run's history.csv, epoch 1
    against the median of the later ones;
  - predict: ``transferkit predict RUN <validation files> --format json`` on the
    original files, top-1 against the run's own validation predictions
    (predictions.csv);
  - memory: the peak RSS of every stage's process (the largest process of its tree,
    loader workers included; ``os.wait4``); then scan and loader again on half and
    on all the files at a batch that both sizes fill several times, for what each
    more file costs, carried to 10,000 files.

  - decode floor (in the scan stage): per file, on one thread, what reading and
    hashing, a full decode, the reduced-scale decode alone (every entropy-coded
    block: the check itself) and the scan's own check with its working copy cost;
    ``full_over_reduced`` is the most any scan that decodes every block can gain
    over a full-decode scan;
  - with ``--reference DIR`` (a checkout of earlier code, e.g.
    ``git worktree add --detach /tmp/before 6ebbc11``): that code's cold scan
    alternating with this code's, twice each, and its fine-tuning fit, all in this
    run, for speed-ups taken in one run.

Each stage's own ``load_data`` scan runs before its clock starts. Prints JSON (and
writes it with --out); each key names its unit.

    .venv/bin/python bench/photos.py --images 60 --out bench/results/photos_before.json
    # on a GPU machine (bench/gpu_check.sh runs it):
    python bench/photos.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import command_line, emit, git_state
from _photos_data import CLASSES, EXIF_ROTATED_EVERY, ensure_photos, photo_path

STAGES = ("scan", "loader", "pipeline")
SCALED = ("scan", "loader")  # measured again at two file counts
NOISE_MIB = 5  # peak RSS of one stage differs by about this much from run to run
SCALING_FILES = 10_000
TARGETS = {  # acceptance on photos, each a ratio measured in one run
    "pipeline_over_bare_forward": 0.8,
    "fine_tune_first_over_later_epochs": 3.0,
    "predict_top1_agreement": 0.99,
    "scan_speedup_over_baseline": 3.0,
    "scan_over_full_decode_same_run": 3.0,
    "scan_speedup_over_reference_same_run": 3.0,
}
DECODE_FLOOR_FILES = 20


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=120)
    p.add_argument("--photo-size", default="4032x3024", help="WxH of the synthetic JPEGs")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the photos")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--backbone", default="efficientnet_lite0", help="any fit --backbone")
    p.add_argument("--weights", help="fit's --weights (e.g. 'none'); default: pretrained")
    p.add_argument("--batch-size", type=int, default=64, help="fit extracts in batches of 64")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--workers", type=int, help="loader processes (default: fit's, auto)")
    p.add_argument("--fine-tune-epochs", type=int, default=3)
    p.add_argument("--folder", help="where the photos are kept (default: a temporary folder)")
    p.add_argument("--baseline", help="an earlier photos JSON: the scan speed-up against it")
    p.add_argument(
        "--reference",
        help="a checkout of earlier code: its scan and fine-tuning timed in this run too",
    )
    p.add_argument(
        "--no-scaling", dest="scaling", action="store_false", help="skip the memory-scaling runs"
    )
    p.add_argument("--out", help="also write the JSON here")
    # a stage run in its own process (internal)
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--stage-out", help=argparse.SUPPRESS)
    p.add_argument("--loader-passes", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.photo_size.lower().split("x"))
    except ValueError:
        p.error(f"--photo-size must be WxH, e.g. 4032x3024, got {args.photo_size!r}")
    args.size = (w, h)
    if args.images < 2 * len(CLASSES):
        p.error(f"--images must be at least {2 * len(CLASSES)}, got {args.images}")
    return args


# ---------------------------------------------------------------- stage processes


def _device(args):
    import torch

    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def full_decode_scan(folder) -> tuple[float, int]:
    """The scan as it was before reduced-scale decoding, as a same-run reference:
    every file read, hashed and decoded whole by Pillow (EXIF orientation read), in
    as many threads as ``check_data`` uses. Returns (seconds, files)."""
    import hashlib
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    files = sorted(p for p in Path(folder).rglob("*.jpg"))

    def check(path: Path) -> bool:
        data = path.read_bytes()
        hashlib.sha1(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img.getexif().get(0x0112, 1)
        return True

    start = time.perf_counter()
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        assert all(pool.map(check, files))
    return time.perf_counter() - start, len(files)


def decode_floor(folder, image_size: int) -> dict:
    """Milliseconds per file on one thread, over the first ``DECODE_FLOOR_FILES``
    photos (best of two passes, so the page cache is warm for all): read + SHA-1; a
    full decode; the reduced-scale decode the scan does (draft mode at the working
    side: still every entropy-coded block, which is what finds truncated and broken
    files); and ``inspect_image`` with the working copy, the scan's whole check.
    ``full_over_reduced`` bounds what any scan that decodes every block can gain."""
    import hashlib
    import io

    from PIL import Image

    from transferkit.data.copies import working_side
    from transferkit.data.images import draft, inspect_image

    side = working_side(image_size)
    datas = [p.read_bytes() for p in sorted(Path(folder).rglob("*.jpg"))[:DECODE_FLOOR_FILES]]

    def full(d):
        with Image.open(io.BytesIO(d)) as img:
            img.load()

    def reduced(d):
        with Image.open(io.BytesIO(d)) as img:
            draft(img, side)
            img.load()

    def ms(fn) -> float:
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            for d in datas:
                fn(d)
            best = min(best, time.perf_counter() - start)
        return 1000 * best / len(datas)

    read = ms(lambda d: hashlib.sha1(bytes(d)).hexdigest())
    times = {
        "files": len(datas),
        "working_side": side,
        "hash_ms": round(read, 2),
        "full_decode_ms": round(ms(full), 2),
        "reduced_decode_ms": round(ms(reduced), 2),
        "scan_check_ms": round(ms(lambda d: inspect_image(d, side=side)), 2),
    }
    times["full_over_reduced"] = round(
        (read + times["full_decode_ms"]) / (read + times["reduced_decode_ms"]), 3
    )
    return times


def stage_scan(args) -> dict:
    """``check_data`` as ``transferkit data check`` calls it: cold, then warm; before
    it, the full-decode scan of the same files (``full_decode_scan``) for a ratio
    taken in one run."""
    from transferkit.data import check_data

    reference, reference_files = full_decode_scan(args.data)
    start = time.perf_counter()
    report = check_data(args.data, val_split=0.2, seed=0)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    check_data(args.data, val_split=0.2, seed=0)
    warm = time.perf_counter() - start
    totals = report.totals()
    return {
        "files": report.scanned,
        "usable_images": totals["train"] + totals["val"] + totals["test"],
        "usable": report.usable,
        "cold_seconds": round(cold, 3),
        "cold_images_per_s": round(report.scanned / cold, 2),
        "warm_images_per_s": round(report.scanned / warm, 2),
        "full_decode_images_per_s": round(reference_files / reference, 2),
        "cold_over_full_decode": round((report.scanned / cold) / (reference_files / reference), 3),
        "decode_floor": decode_floor(args.data, args.image_size),
    }


def _dataset(args):
    """The eval-transform dataset of every usable image (scan before the clock)."""
    from transferkit.backbones import create_backbone
    from transferkit.data import ImageDataset, create_transform, load_data

    splits = load_data(args.data, val_split=0.2, seed=0)
    examples = splits.train + splits.val + splits.test
    backbone = create_backbone(args.backbone, weights=args.weights)
    tf = create_transform(backbone.data_config, train=False, image_size=args.image_size)
    dataset = ImageDataset(examples, tf, channels=backbone.input_size[0])
    return backbone, tf, dataset, [e.digest for e in examples]


def stage_loader(args) -> dict:
    from transferkit.data import create_loader, default_workers

    device = _device(args)
    _, _, dataset, _ = _dataset(args)
    loader = create_loader(
        dataset, batch_size=args.batch_size, workers=args.workers, device=device.type
    )
    passes = []
    for _ in range(args.loader_passes):
        start = time.perf_counter()
        for x, _y in loader:
            x.to(device, non_blocking=True)
        _sync(device)
        passes.append(len(dataset) / (time.perf_counter() - start))
    workers = args.workers
    if workers is None:
        workers = default_workers(len(dataset), args.batch_size, device)
    return {
        "images": len(dataset),
        "workers": workers,
        # "gpu": working copies decoded by nvJPEG (data/gpu.py); "cpu": Pillow
        "decoded_on": "gpu" if type(loader).__name__ == "_GpuDecodeLoader" else "cpu",
        "first_pass_images_per_s": round(passes[0], 2),
        "second_pass_images_per_s": round(passes[1], 2) if len(passes) > 1 else None,
    }


PIPELINE_REPEATS = 3


def stage_pipeline(args) -> dict:
    """Bare forward and the whole extraction (each time into an empty feature cache),
    alternated ``PIPELINE_REPEATS`` times and closed by a bare forward; the ratio is
    of the medians, so one slow moment of a shared machine does not decide it."""
    from throughput import bare_forward_ips, pipeline_ips

    from transferkit.compute import create_compute
    from transferkit.data import gpu

    device = _device(args)
    backbone, tf, dataset, digests = _dataset(args)
    compute = create_compute(device, args.precision)
    backbone = backbone.eval().to(device)
    shape, n, bs = tf.config["input_size"], len(dataset), args.batch_size
    features = Path(os.environ["TRANSFERKIT_CACHE_DIR"]) / "features"
    bare, pipe = [], []
    for r in range(PIPELINE_REPEATS):
        bare.append(bare_forward_ips(backbone, shape, n, bs, compute))
        pipe.append(pipeline_ips(backbone, dataset, digests, features / str(r), args, compute))
    bare.append(bare_forward_ips(backbone, shape, n, bs, compute))
    bare_median, pipe_median = statistics.median(bare), statistics.median(pipe)
    return {
        "images": n,
        # whether nvJPEG decoded the copies (None: not tried, as on a CPU)
        "gpu_jpeg_decode": gpu.decoding_on(device),
        # the measured choice between nvJPEG and the CPU loader (data/gpu.py)
        "decode_choices": [dataclasses.asdict(c) for c in gpu.choices()],
        "input_size": list(shape),
        "pipeline_images_per_s": round(pipe_median, 2),
        "bare_forward_images_per_s": round(bare_median, 2),
        "pipeline_runs_images_per_s": [round(v, 2) for v in pipe],
        "bare_forward_runs_images_per_s": [round(v, 2) for v in bare],
        "pipeline_over_bare_forward": round(pipe_median / bare_median, 3),
    }


def run_stage(args) -> int:
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    result = {"scan": stage_scan, "loader": stage_loader, "pipeline": stage_pipeline}[args.stage](
        args
    )
    Path(args.stage_out).write_text(json.dumps(result) + "\n")
    return 0


# ------------------------------------------------------------------ orchestration


class Child:
    """Runs commands each in a fresh process with an empty transferkit cache, and
    records their wall time and peak RSS (the largest process of the tree)."""

    def __init__(self, work: Path):
        self.work = work
        self.count = 0

    def run(self, name: str, cmd: list[str], env: dict | None = None) -> dict:
        self.count += 1
        tag = f"{self.count:02d}-{name}"
        env = {
            **os.environ,
            "TRANSFERKIT_CACHE_DIR": str(self.work / f"cache-{tag}"),
            "TRANSFERKIT_PROGRESS": "0",
            **(env or {}),
        }
        log, out = self.work / f"{tag}.log", self.work / f"{tag}.out"
        print(f"photos: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with open(out, "w") as stdout, open(log, "w") as stderr:
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:  # interrupted or stopped: take the stage down too
                proc.kill()
                proc.wait()
                raise
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{tail}")
        return {"seconds": seconds, "peak_rss_mib": _mib(usage.ru_maxrss), "stdout": out}


def _mib(maxrss: int) -> float:
    """ru_maxrss is in KiB on Linux, in bytes on macOS."""
    return round(maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _stage(child: Child, args, name: str, data: Path, tag: str = "") -> dict:
    out = child.work / f"stage-{name}{tag}.json"
    cmd = [sys.executable, __file__, "--stage", name, "--data", str(data)]
    cmd += ["--stage-out", str(out), "--backbone", args.backbone]
    cmd += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    cmd += ["--device", args.device, "--precision", args.precision]
    cmd += ["--loader-passes", str(args.loader_passes)]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    ran = child.run(name + tag, cmd)
    return {
        **json.loads(out.read_text()),
        "process_seconds": round(ran["seconds"], 3),
        "peak_rss_mib": ran["peak_rss_mib"],
    }


def _fit_command(args, data: Path, run: Path, work: Path) -> list[str]:
    cmd = [sys.executable, "-m", "transferkit", "fit", str(data), "--out", str(run)]
    cmd += ["--strategy", "fine-tune", "--fine-tune-epochs", str(args.fine_tune_epochs)]
    cmd += ["--backbone", args.backbone, "--image-size", str(args.image_size)]
    cmd += ["--device", args.device, "--precision", args.precision]
    cmd += ["--cache-dir", str(work / "fit-features"), "--json"]
    if args.weights:
        cmd += ["--weights", args.weights]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    return cmd


def fine_tune(
    child: Child, args, data: Path, name: str = "fit", env: dict | None = None
) -> tuple[dict, Path]:
    """``transferkit fit --strategy fine-tune``; per-epoch seconds from history.csv,
    and of them the seconds spent waiting for batches (``input_seconds``, where the
    code records it)."""
    run = child.work / name
    ran = child.run(name, _fit_command(args, data, run, child.work), env)
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "fine-tune"]
    epochs = [float(r["seconds"]) for r in rows]
    waits = [float(r["input_seconds"]) for r in rows if r.get("input_seconds")]
    later = statistics.median(epochs[1:]) if len(epochs) > 1 else None
    phases = sum(p["seconds"] for p in metrics["phases"])
    return {
        "train_images": metrics["n_train"],
        "val_images": metrics["n_val"],
        "val_accuracy": metrics.get("val_accuracy"),
        "epoch_seconds": [round(s, 3) for s in epochs],
        "first_epoch_seconds": round(epochs[0], 3),
        "later_epochs_median_seconds": None if later is None else round(later, 3),
        "first_over_later_epochs": None if later is None else round(epochs[0] / later, 3),
        "epoch_input_seconds": [round(w, 3) for w in waits] or None,
        "epoch_input_share": [round(w / e, 3) for w, e in zip(waits, epochs, strict=False)] or None,
        "fit_seconds_total": round(metrics["seconds_total"], 3),
        "fit_seconds_outside_phases": round(metrics["seconds_total"] - phases, 3),
        "command_seconds": round(ran["seconds"], 3),
        "peak_rss_mib": ran["peak_rss_mib"],
    }, run


_SCAN_ONLY = (
    "import sys, time\n"
    "from transferkit.data import check_data\n"
    "start = time.perf_counter()\n"
    "report = check_data(sys.argv[1], val_split=0.2, seed=0)\n"
    "print(report.scanned / (time.perf_counter() - start))\n"
)


def reference_runs(child: Child, args, data: Path, this_fit: dict) -> dict:
    """The code in ``--reference`` against this code, in this run: cold scans
    (``check_data``, each in a fresh process with an empty cache), alternating
    reference and this code twice, then the reference's fine-tuning fit."""
    ref = Path(args.reference).resolve()
    ref_env = {"PYTHONPATH": str(ref / "src")}
    this_env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    speeds: dict[str, list[float]] = {"reference": [], "this": []}
    for _ in range(2):
        for who, env in (("reference", ref_env), ("this", this_env)):
            ran = child.run(f"scan-{who}", [sys.executable, "-c", _SCAN_ONLY, str(data)], env)
            speeds[who].append(round(float(ran["stdout"].read_text().split()[-1]), 2))
    old, _ = fine_tune(child, args, data, "fit-reference", ref_env)
    commit = subprocess.run(
        ["git", "-C", str(ref), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    med = {k: statistics.median(v) for k, v in speeds.items()}
    return {
        "reference": str(ref),
        "reference_commit": commit or None,
        "scan_images_per_s": speeds,
        "scan_speedup": round(med["this"] / med["reference"], 3),
        "reference_epoch_seconds": old["epoch_seconds"],
        "fine_tune_first_epoch_speedup": round(
            old["first_epoch_seconds"] / this_fit["first_epoch_seconds"], 2
        ),
        "fine_tune_later_epochs_speedup": round(
            old["later_epochs_median_seconds"] / this_fit["later_epochs_median_seconds"], 2
        ),
        "reference_fit_seconds_total": old["fit_seconds_total"],
        "this_fit_seconds_total": this_fit["fit_seconds_total"],
    }


def predict_agreement(child: Child, args, run: Path) -> dict:
    """The saved run on the original validation files against its own validation
    predictions (predictions.csv)."""
    with open(run / "predictions.csv", newline="") as f:
        val = [r for r in csv.DictReader(f) if r["split"] == "val"]
    cmd = [sys.executable, "-m", "transferkit", "predict", str(run)]
    cmd += [r["path"] for r in val]
    cmd += ["--format", "json", "--device", args.device, "--batch-size", str(args.batch_size)]
    ran = child.run("predict", cmd)
    got = {p["path"]: p for p in json.loads(ran["stdout"].read_text())["predictions"]}
    same = sum(got.get(r["path"], {}).get("prediction") == r["prediction"] for r in val)
    gaps = [
        abs(got[r["path"]]["confidence"] - float(r["confidence"])) for r in val if r["path"] in got
    ]
    return {
        "val_images": len(val),
        "predicted": len(got),
        "top1_agreement": round(same / len(val), 4) if val else None,
        "max_confidence_difference": round(max(gaps), 6) if gaps else None,
        "command_seconds": round(ran["seconds"], 3),
        "peak_rss_mib": ran["peak_rss_mib"],
    }


def half_folder(root: Path, images: int, work: Path) -> Path:
    """The first half of the photos (every class), hard-linked (copied where links
    are not possible) into a new folder."""
    half = work / "half"
    for i in range(images // 2):
        src = photo_path(root, i)
        dst = half / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())
    return half


def memory_scaling(full: dict, half: dict, n_full: int, n_half: int) -> dict:
    """Peak RSS at half and all the files, per stage, and the straight line through
    them carried to SCALING_FILES files."""
    out = {}
    for name in half:
        a, b = half[name]["peak_rss_mib"], full[name]["peak_rss_mib"]
        slope = (b - a) / (n_full - n_half)
        out[name] = {
            "files": [n_half, n_full],
            "peak_rss_mib": [a, b],
            "mib_per_1000_files": round(1000 * slope, 2),
            f"projected_{SCALING_FILES}_files_mib": round(b + slope * (SCALING_FILES - n_full)),
        }
    return out


def _scaling_statement(by_stage: dict, batch: int) -> str:
    rows = list(by_stage.values())
    n_half, n_full = rows[0]["files"]
    growth = ", ".join(f"{k} {v['mib_per_1000_files']:+.1f}" for k, v in by_stage.items())
    noise = 1000 * NOISE_MIB / (n_full - n_half)
    top = max(r[f"projected_{SCALING_FILES}_files_mib"] for r in rows)
    return (
        f"peak RSS per 1,000 more files (MiB): {growth}, measured between {n_half} and "
        f"{n_full} files at batch {batch} (every size fills several batches, so this is "
        f"what a file costs, not a fuller batch; {NOISE_MIB} MiB of noise between two "
        f"processes is {noise:.0f} MiB per 1,000 files at this spread); a straight line "
        f"gives at most {top:,} MiB at {SCALING_FILES:,} files"
    )


def scaling_runs(child: Child, args, root: Path) -> dict:
    """Scan and loader again on half and on all the files, with batches small enough
    that both sizes fill several of them."""
    batch = max(2, min(args.batch_size, args.images // 8))
    small = argparse.Namespace(**{**vars(args), "batch_size": batch, "loader_passes": 1})
    half = half_folder(root, args.images, child.work)
    runs = {
        tag: {name: _stage(child, small, name, folder, tag) for name in SCALED}
        for tag, folder in (("-half", half), ("-all", root))
    }
    by_stage = memory_scaling(runs["-all"], runs["-half"], args.images, args.images // 2)
    return {
        "batch_size": batch,
        "by_stage": by_stage,
        "statement": _scaling_statement(by_stage, batch),
    }


def _targets(result: dict, baseline: dict | None) -> dict:
    values = {
        "pipeline_over_bare_forward": result["pipeline"]["pipeline_over_bare_forward"],
        "fine_tune_first_over_later_epochs": result["fine_tune"]["first_over_later_epochs"],
        "predict_top1_agreement": result["predict"]["top1_agreement"],
        "scan_speedup_over_baseline": None,
        "scan_over_full_decode_same_run": result["scan"].get("cold_over_full_decode"),
        "scan_speedup_over_reference_same_run": result.get("same_run_reference", {}).get(
            "scan_speedup"
        ),
    }
    if baseline:
        old = baseline["scan"]["cold_images_per_s"]
        values["scan_speedup_over_baseline"] = round(result["scan"]["cold_images_per_s"] / old, 3)
    return {
        k: {"value": v, "target": f">= {TARGETS[k]}", "met": None if v is None else v >= TARGETS[k]}
        for k, v in values.items()
    }


def against_baseline(result: dict, baseline: dict) -> dict:
    """Speed-ups over an earlier run (two runs, so only as steady as the machine was):
    the scan, and a fine-tuning epoch (the first, and the median of the later ones)."""
    old, new = baseline["fine_tune"], result["fine_tune"]
    return {
        "baseline_commit": baseline.get("transferkit_commit"),
        "scan_cold": round(
            result["scan"]["cold_images_per_s"] / baseline["scan"]["cold_images_per_s"], 2
        ),
        "fine_tune_first_epoch": round(old["first_epoch_seconds"] / new["first_epoch_seconds"], 2),
        "fine_tune_later_epochs": round(
            old["later_epochs_median_seconds"] / new["later_epochs_median_seconds"], 2
        ),
    }


def _photos_record(manifest: dict, folder: Path) -> dict:
    sizes = manifest["bytes"]
    return {
        "folder": str(folder),
        "written_now": manifest["written_now"],
        "images": manifest["images"],
        "classes": list(CLASSES),
        "photo_size": manifest["photo_size"],
        "jpeg_quality": manifest["quality"],
        "exif_rotated": sum(
            1 for i in range(len(sizes)) if i % EXIF_ROTATED_EVERY == EXIF_ROTATED_EVERY - 1
        ),
        "file_mb": {
            "mean": round(statistics.mean(sizes) / 1e6, 2),
            "min": round(min(sizes) / 1e6, 2),
            "max": round(max(sizes) / 1e6, 2),
        },
        "total_mb": round(sum(sizes) / 1e6, 1),
    }


def measure(args, manifest: dict, folder: Path, work: Path) -> dict:
    root = folder / "photos"
    child = Child(work)
    stages = {name: _stage(child, args, name, root) for name in STAGES}
    fine, run = fine_tune(child, args, root)
    predict = predict_agreement(child, args, run)
    reference = reference_runs(child, args, root, fine) if args.reference else None
    scaling = {"statement": "not measured (--no-scaling)"}
    if args.scaling:
        scaling = scaling_runs(child, args, root)
    peaks = {name: stages[name]["peak_rss_mib"] for name in STAGES}
    peaks.update(fit=fine["peak_rss_mib"], predict=predict["peak_rss_mib"])
    return {
        "photos": _photos_record(manifest, folder),
        **stages,
        "fine_tune": fine,
        "predict": predict,
        "peak_rss_mib": peaks,
        "memory_scaling": scaling,
        **({"same_run_reference": reference} if reference else {}),
    }


def _environment(args, argv) -> dict:
    import torch

    device = _device(args)
    return {
        "benchmark": "photos",
        "transferkit_commit": git_state(),
        "command": command_line("bench/photos.py", argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": _version_of("torchvision"),
        "backbone": args.backbone,
        "weights": args.weights or "pretrained",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
    }


def _version_of(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.stage:
        return run_stage(args)
    # `timeout` and kill send SIGTERM: unwind, so the running stage and the
    # temporary folder go too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    with tempfile.TemporaryDirectory(prefix="tk-photos-") as tmp:
        work = Path(tmp)
        folder = Path(args.folder) if args.folder else work / "folder"
        # the photos first: their writer processes fork before torch is imported here
        manifest = ensure_photos(folder, args.images, args.size, args.quality)
        result = _environment(args, argv)
        result.update(measure(args, manifest, folder, work))
    result["targets"] = _targets(result, baseline)
    if baseline:
        result["against_baseline"] = against_baseline(result, baseline)
    result["orchestrator_peak_rss_mib"] = _mib(_self_maxrss())
    result["load_average_1min"] = {"start": load_start, "end": round(os.getloadavg()[0], 2)}
    result["bench_seconds"] = round(time.perf_counter() - started, 1)
    emit(result, args.out)
    return 0


def _self_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    sys.exit(main())
