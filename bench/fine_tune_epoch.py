"""Benchmark: does transferkit's fine-tuning loop cost more than a plain one?

On the common Fashion-MNIST data (100 per class, 800 train / 200 validation at
96 px), in one process and alternating ``--repeats`` times:

  - transferkit: ``TransferClassifier(backbone, "fine-tune", cut=<top>, image_size=S,
    fine_tune_epochs=N)``; each fine-tuning epoch is timed from its start to the end
    of its last callback: training, validation, early stopping's copy of the best
    weights, history and progress, everything the loop does per epoch (no run
    folder, so no checkpoint). ``history_``'s seconds stop before the callbacks;
  - plain: the same backbone with a new linear classifier, BN in inference mode, the
    same loader (``create_loader``, training augmentation, batch 32), the same memory
    layout and fused AdamW, N epochs of forward + backward + step, then a pass over
    the validation images; nothing else.

Both use ``--workers`` loader processes (default: ``create_loader``'s own choice).
The first epoch of each run is reported but left out of the medians (warm-up).
Prints JSON (and writes it with --out).

    .venv/bin/python bench/fine_tune_epoch.py --out bench/results/fine_tune_epoch.json
    .venv/bin/python bench/fine_tune_epoch.py --workers 2   # what workers cost on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import command_line, emit, git_state


def epoch_timers(phase: str) -> tuple[list, list[float]]:
    """Training callbacks that time each epoch of ``phase`` as the loop runs it, and
    the list they fill: the epoch's training and validation (``epoch_seconds``, timed
    by the loop from the epoch's start) plus every callback after them, up to the end
    of the last one."""
    from transferkit.training import Callback

    seconds: list[float] = []
    validated = [0.0]

    class ValidationDone(Callback):
        order = -1  # the first callback after validation, before early stopping's

        def on_validation_end(self, state) -> None:
            validated[0] = time.perf_counter()

    class EpochDone(Callback):
        order = 950  # the last at the epoch's end (hooks run at 900)

        def on_epoch_end(self, state) -> None:
            if state.name == phase:
                seconds.append(state.epoch_seconds + time.perf_counter() - validated[0])

    return [ValidationDone(), EpochDone()], seconds


def transferkit_epochs(data: Path, work: Path, args) -> list[float]:
    from transferkit.estimator import TransferClassifier

    timers, seconds = epoch_timers("fine-tune")
    clf = TransferClassifier(
        args.backbone,
        "fine-tune",
        cut=args.cut,
        image_size=args.image_size,
        fine_tune_epochs=args.epochs,
        fine_tune_patience=args.epochs,
        workers=args.workers,
        cache_dir=str(work / "features"),
        seed=0,
    )
    clf.fit(data, callbacks=timers)
    epochs = [row for row in clf.history_ if row["phase"] == "fine-tune"]
    if len(seconds) != len(epochs):
        raise RuntimeError(f"timed {len(seconds)} fine-tuning epochs of {len(epochs)}")
    return seconds


def plain_epochs(splits, backbone, args) -> list[float]:
    from transferkit.backbones.builtin import create_builtin_model
    from transferkit.compute import create_compute
    from transferkit.data import ImageDataset, create_loader, create_transform

    compute = create_compute(torch.device("cpu"), "fp32")
    model = create_builtin_model(args.backbone)
    model.reset_classifier(len(splits.classes))
    model.eval()  # BN in inference mode, as transferkit's default --bn frozen
    compute.prepare(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    train_tf = create_transform(backbone.data_config, train=True, image_size=args.image_size)
    eval_tf = create_transform(backbone.data_config, train=False, image_size=args.image_size)
    train = create_loader(
        ImageDataset(splits.train, train_tf), batch_size=32, shuffle=True, workers=args.workers
    )
    val = create_loader(ImageDataset(splits.val, eval_tf), batch_size=32, workers=args.workers)
    seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(compute.to_device(x)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.inference_mode():
            for x, _y in val:
                model(compute.to_device(x))
        seconds.append(time.perf_counter() - start)
    return seconds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cut", default="conv_head", help="the backbone's top (fine-tune all)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per run")
    p.add_argument("--repeats", type=int, default=2, help="transferkit/plain alternations")
    p.add_argument("--workers", type=int, help="loader processes (default: create_loader's)")
    p.add_argument("--out", help="also write the JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="tk-ft-epoch-"))
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(work / "cache")
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    from transferkit.backbones import create_backbone
    from transferkit.data import load_data, write_dataset

    data = work / "data"
    write_dataset("fashion-mnist", data, per_class=args.per_class, test=0, seed=0)
    splits = load_data(data, val_split=0.2, seed=0)
    backbone = create_backbone(args.backbone)
    runs: dict[str, list[list[float]]] = {"transferkit": [], "plain": []}
    for i in range(args.repeats):
        runs["transferkit"].append(transferkit_epochs(data, work / f"tk-{i}", args))
        runs["plain"].append(plain_epochs(splits, backbone, args))
        print(json.dumps({"repeat": i, **{k: v[-1] for k, v in runs.items()}}), file=sys.stderr)
    medians = {k: statistics.median(s for r in v for s in r[1:] or r) for k, v in runs.items()}
    result = {
        "benchmark": "fine_tune_epoch",
        "transferkit_commit": git_state(),
        "command": command_line("bench/fine_tune_epoch.py", argv),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "epoch_seconds": runs,
        "median_epoch_seconds": {k: round(v, 3) for k, v in medians.items()},
        "transferkit_over_plain": round(medians["transferkit"] / medians["plain"], 3),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
