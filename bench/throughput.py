"""Benchmark: does feature extraction run at the backbone's speed?

On the Fashion-MNIST PNGs of a demo dataset (train + validation + test), measures in
one run, in images/s:

  - loader alone: open + decode + resize/crop + normalise + collate
    (``ImageDataset`` + ``create_loader``, the settings ``fit`` uses), one warm-up
    pass then a timed pass;
  - bare forward (the baseline): the backbone's ``forward_features`` + pooling on a
    random tensor batch already in memory, ``inference_mode``, eval mode;
  - the whole extraction pipeline: ``FeatureCache(fresh folder).get(...)`` from the
    PNG files, exactly as ``fit`` calls it (loader workers start, backbone, shard
    written and checksummed), timed from the call to the returned array.

Bare forward and pipeline alternate ``--repeats`` times; medians are reported, and
``pipeline_over_bare_forward`` (target: >= 0.9) is the ratio of the medians. Prints
JSON (and writes it with --out).

    .venv/bin/python bench/throughput.py --out bench/results/throughput.json
    # on a GPU machine (not run here: no GPU on the development machines):
    .venv/bin/python bench/throughput.py --device cuda --batch-size 256 --precision bf16

``bench/loader_throughput.py`` asks a narrower question on large synthetic JPEG
photos (is decoding the bottleneck?) and stays as it is.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import command_line, emit, git_state


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_ips(dataset, batch_size: int, workers: int | None, device: torch.device) -> float:
    from transferkit.data import create_loader

    loader = create_loader(dataset, batch_size=batch_size, workers=workers, device=device.type)
    for _ in loader:  # warm-up: starts the workers, fills the page cache
        pass
    start = time.perf_counter()
    for x, _y in loader:
        x.to(device, non_blocking=True)
    _sync(device)
    return len(dataset) / (time.perf_counter() - start)


def bare_forward_ips(backbone, shape, n_images: int, batch_size: int, compute) -> float:
    """Backbone alone: the same batches the pipeline runs, from random tensors, with
    the same compute settings (precision, memory layout) as ``fit``."""
    from transferkit.features import pool

    device = compute.device
    shape = (batch_size, *shape)
    compute.prepare(backbone)
    x = compute.to_device(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    last = n_images % batch_size
    sizes = [batch_size] * (n_images // batch_size) + ([last] if last else [])
    with torch.inference_mode(), compute.autocast():
        for _ in range(2):  # warm-up (kernel selection, allocator)
            backbone.forward_features(x)
        _sync(device)
        start = time.perf_counter()
        for n in sizes:
            pool(backbone.forward_features(x[:n]), "avg").float().cpu()
        _sync(device)
    return n_images / (time.perf_counter() - start)


def pipeline_ips(backbone, dataset, digests, cache_dir: Path, args, compute) -> float:
    """The whole extraction as ``fit`` runs it, into an empty cache."""
    from transferkit.data import create_loader
    from transferkit.features import Extraction, FeatureCache

    cache = FeatureCache(cache_dir)
    device = compute.device

    def loader(ds, bs):
        return create_loader(ds, batch_size=bs, workers=args.workers, device=device.type)

    extraction = Extraction(
        image_size=args.image_size,
        representation="avg",
        compute=compute,
        loader=loader,
        batch_size=args.batch_size,
    )
    start = time.perf_counter()
    feats = cache.get(backbone, dataset, digests, extraction)
    _sync(device)
    seconds = time.perf_counter() - start
    if cache.stats.extracted != len(set(digests)) or len(feats) != len(digests):
        raise RuntimeError(f"expected a cold extraction, got {cache.stats}")
    return len(digests) / seconds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="loader processes (default: fit's, auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--repeats", type=int, default=5, help="bare/pipeline alternations")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="tk-throughput-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # data, caches: not kept
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(work / "cache")
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    from transferkit.backbones import create_backbone
    from transferkit.compute import create_compute
    from transferkit.data import (
        ImageDataset,
        create_transform,
        default_workers,
        load_data,
        write_dataset,
    )

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    write_dataset("fashion-mnist", work / "data", per_class=args.per_class, test=args.test, seed=0)
    splits = load_data(work / "data", val_split=0.2, seed=0)
    examples = splits.train + splits.val + splits.test
    # fit's settings: bf16 autocast if asked, NHWC convolutions (compute.create_compute)
    compute = create_compute(device, args.precision)
    backbone = create_backbone(args.backbone).eval().to(device)
    tf = create_transform(backbone.data_config, train=False, image_size=args.image_size)
    dataset = ImageDataset(examples, tf, channels=backbone.input_size[0])
    digests = [e.digest for e in examples]
    workers = (
        default_workers(len(dataset), args.batch_size, device)
        if args.workers is None
        else args.workers
    )

    loader = {
        f"workers={w}": loader_ips(dataset, args.batch_size, w, device)
        for w in sorted({0, workers})
    }
    bare, pipe = [], []
    for i in range(args.repeats):
        bare.append(
            bare_forward_ips(
                backbone, tf.config["input_size"], len(dataset), args.batch_size, compute
            )
        )
        pipe.append(pipeline_ips(backbone, dataset, digests, work / f"features-{i}", args, compute))
        print(
            json.dumps(
                {"repeat": i, "bare_forward": round(bare[-1], 1), "pipeline": round(pipe[-1], 1)}
            ),
            file=sys.stderr,
            flush=True,
        )
    bare_m, pipe_m = statistics.median(bare), statistics.median(pipe)
    ratio = pipe_m / bare_m
    # each pipeline pass against the bare pass just before it: robust to slow drifts
    # of a shared machine's load
    paired = statistics.median(p / b for p, b in zip(pipe, bare, strict=True))
    result = {
        "benchmark": "throughput",
        "transferkit_commit": git_state(),
        "command": command_line("bench/throughput.py", argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "images": len(dataset),
        "source": f"fashion-mnist PNG 28x28 grayscale ({args.per_class}/class + {args.test} test)",
        "backbone": args.backbone,
        "input_size": list(tf.config["input_size"]),
        "batch_size": args.batch_size,
        "workers": workers,
        "loader_images_per_s": {k: round(v, 1) for k, v in loader.items()},
        "bare_forward_images_per_s": round(bare_m, 1),
        "pipeline_images_per_s": round(pipe_m, 1),
        "repeats": {
            "bare_forward": [round(v, 1) for v in bare],
            "pipeline": [round(v, 1) for v in pipe],
        },
        "pipeline_over_bare_forward": round(ratio, 3),
        "pipeline_over_bare_forward_paired_median": round(paired, 3),
        "target_pipeline_over_bare_forward": 0.9,
        "target_met": bool(ratio >= 0.9),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
