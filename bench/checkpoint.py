"""What a checkpoint that is complete or ignored costs per epoch.

One fine-tuning checkpoint of a real backbone (weights, best weights, AdamW state)
written two ways, alternating in one run:
  - plain: the three tensor files written straight with safetensors' ``save_file``
    (what a trainer that can leave a torn checkpoint does);
  - transferkit: ``Checkpointer.save``: per-epoch files written to temporary names,
    flushed to disk and renamed, their SHA-256 taken, the record written last with
    the random state, the previous epoch's files removed.
Both write to the same disk folder (``--dir``, default: a temporary folder under the
current one, not /tmp, which may be memory).

    .venv/bin/python bench/checkpoint.py --out bench/results/checkpoint.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import command_line, emit, git_state


def _phase(backbone_name: str):
    import torch

    from transferkit import create_backbone
    from transferkit.freezing import create_optimizer

    model = create_backbone(backbone_name).model
    optimizer = create_optimizer(model, lr=1e-3)
    model(torch.randn(2, 3, 96, 96)).sum().backward()
    optimizer.step()  # the moments exist, as after an epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    return model, optimizer, scheduler, best


def _plain(folder: Path, model, optimizer, best) -> None:
    from safetensors.torch import save_file

    from transferkit.checkpoints import split_optimizer_state

    folder.mkdir(parents=True, exist_ok=True)
    tensors, _ = split_optimizer_state(optimizer.state_dict())
    for name, part in (("model", model.state_dict()), ("best", best), ("optim", tensors)):
        own = {k: v.detach().contiguous() for k, v in part.items()}
        save_file(own, str(folder / f"{name}.safetensors"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--dir", help="where to write (default: a temporary folder here)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    from transferkit.checkpoints import Checkpointer

    load_start = round(os.getloadavg()[0], 2)
    root = Path(tempfile.mkdtemp(prefix="tk-ckpt-", dir=args.dir or "."))
    model, optimizer, scheduler, best = _phase(args.backbone)
    checkpointer = Checkpointer(root / "transferkit")
    seconds: dict[str, list[float]] = {"plain": [], "transferkit": []}
    try:
        for epoch in range(args.repeats):
            start = time.perf_counter()
            _plain(root / "plain", model, optimizer, best)
            seconds["plain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpointer.save("fine-tune", model, optimizer, scheduler, best, {"epoch": epoch})
            seconds["transferkit"].append(time.perf_counter() - start)
        size = sum(f.stat().st_size for f in (root / "plain").iterdir())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {k: statistics.median(v[1:]) for k, v in seconds.items()}
    result = {
        "benchmark": "checkpoint",
        "transferkit_commit": git_state(),
        "command": command_line("bench/checkpoint.py", argv),
        "backbone": args.backbone,
        "checkpoint_mib": round(size / 2**20, 1),
        "seconds": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
        "median_seconds": {k: round(v, 4) for k, v in medians.items()},
        "transferkit_over_plain": round(medians["transferkit"] / medians["plain"], 2),
        "extra_ms_per_checkpoint": round(1000 * (medians["transferkit"] - medians["plain"]), 1),
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
