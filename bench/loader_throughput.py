"""Is decoding the bottleneck? Loader images/s vs the backbone's, on the same images.

Writes N synthetic JPEG photos, then measures on them, in one run:
  - loader alone: decode + EXIF + mode conversion + resize/crop + normalise + collate
    (``ImageDataset`` + ``create_loader``), at workers=0 and at the auto worker count;
  - backbone alone (the baseline): efficientnet_lite0 forward, eval mode, on batches
    already in memory;
  - the pipeline: loader feeding the backbone.
The loader keeps up when ``loader_over_backbone`` > 1. Prints JSON.

    .venv/bin/python bench/loader_throughput.py [--images 192] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import transferkit
from transferkit.data import (
    ImageDataset,
    create_loader,
    create_transform,
    default_workers,
    load_data,
)


def write_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """Photo-like JPEGs (smooth gradients + noise, so they compress like photos)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        fx, fy = rng.uniform(0.002, 0.02, 2).tolist()
        phase = rng.uniform(0, 6.28)
        base = 127 + 100 * np.sin(xx * fx + yy * fy + phase)
        rgb = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 12, (h, w, 3))
        img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
        cls = folder / f"class{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        img.save(cls / f"{i:05d}.jpg", quality=90)


def loader_ips(dataset, batch_size: int, workers: int, device: str, epochs: int) -> float:
    loader = create_loader(dataset, batch_size=batch_size, workers=workers, device=device)
    for _ in loader:  # warm-up: starts workers, fills the page cache
        pass
    start = time.perf_counter()
    for _ in range(epochs):
        for x, _y in loader:
            x.to(device, non_blocking=True)
    _sync(device)
    return len(dataset) * epochs / (time.perf_counter() - start)


def backbone_ips(backbone, batches: list[torch.Tensor], device: str, epochs: int) -> float:
    batches = [b.to(device) for b in batches]
    with torch.inference_mode():
        backbone(batches[0])  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(epochs):
            for b in batches:
                backbone(b)
        _sync(device)
    return sum(len(b) for b in batches) * epochs / (time.perf_counter() - start)


def pipeline_ips(backbone, dataset, batch_size: int, workers: int, device: str) -> float:
    """One pass, timed from the first batch on (worker start-up is not throughput)."""
    loader = create_loader(dataset, batch_size=batch_size, workers=workers, device=device)
    seen, start = 0, None
    with torch.inference_mode():
        for x, _ in loader:
            backbone(x.to(device, non_blocking=True))
            if start is None:
                _sync(device)
                start = time.perf_counter()
            else:
                seen += len(x)
        _sync(device)
    return seen / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=192)
    p.add_argument("--photo-size", default="640x480", help="WxH of the synthetic JPEGs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the images")
    p.add_argument("--workers", type=int, help="loader processes (default: auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = p.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    size = tuple(int(v) for v in args.photo_size.lower().split("x"))
    backbone = transferkit.create_backbone("efficientnet_lite0").eval().to(device)
    tf = create_transform(backbone.data_config, train=False)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TRANSFERKIT_CACHE_DIR", os.path.join(tmp, "cache"))
        write_photos(Path(tmp) / "photos", args.images, size)
        data = load_data(Path(tmp) / "photos", val_split=0)
        ds = ImageDataset(data.train, tf)
        auto = default_workers(len(ds), args.batch_size) if args.workers is None else args.workers
        loaders = {
            f"workers={w}": loader_ips(ds, args.batch_size, w, device, args.epochs)
            for w in sorted({0, auto})
        }
        batches = [x for x, _ in create_loader(ds, batch_size=args.batch_size, workers=0)]
        model = backbone_ips(backbone, batches, device, args.epochs)
        both = pipeline_ips(backbone, ds, args.batch_size, auto, device)
    best = max(loaders.values())
    result = {
        "benchmark": "loader_throughput",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "images": len(ds),
        "photo": f"{size[0]}x{size[1]} JPEG q90",
        "input_size": list(tf.config["input_size"]),
        "batch_size": args.batch_size,
        "loader_images_per_s": {k: round(v, 1) for k, v in loaders.items()},
        "backbone_images_per_s": round(model, 1),
        "pipeline_images_per_s": round(both, 1),
        "loader_over_backbone": round(best / model, 2),
        "bottleneck": "backbone" if best > model else "loader",
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
