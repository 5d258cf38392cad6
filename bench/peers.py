"""Benchmark: does transferkit (auto) beat fastai and the Keras guide's recipe?

Same data, backbone, weights, image size, preprocessing and seed for all three, run
one after the other in one process:

  - transferkit: ``TransferClassifier(backbone, image_size=S)`` with the default
    strategy (``auto``), a fresh feature cache, ``fit(data, run_dir=...)``.
  - fastai: ``vision_learner(dls, "tf_efficientnet_lite0", metrics=accuracy)`` and
    ``learn.fine_tune(N)`` with fastai's defaults (1 frozen epoch, then N unfrozen,
    base_lr 2e-3, discriminative LRs, one-cycle; fastai's head; batch 64;
    ``aug_transforms()``). The ImageNet weights are timm's own loading path, from a
    local file holding transferkit's built-in weights (no hub access here).
  - keras-recipe: the Keras transfer-learning guide in plain torch: RandomFlip +
    RandomRotation(0.1) -> frozen base (BN in inference mode) -> GAP -> Dropout(0.2)
    -> Dense; 20 epochs Adam 1e-3 with the base frozen (the base runs every epoch;
    no cache), then 10 epochs Adam 1e-5 with everything unfrozen, BN still in
    inference mode; batch 32; the last epoch's weights are evaluated.

All three use transferkit's 20 % stratified validation split (same seed), are
evaluated on the same test images, and see the same eval preprocessing (the
backbone's timm config: bicubic resize to S/0.875, centre crop S, mean=std=0.5).
Wall time of each covers building the model and data pipeline, training, validation
and the test evaluation. Prints JSON (and writes it with --out).

fastai lives only in the bench environment (it is not a transferkit dependency):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.14.1 torchvision==0.29.1 fastai timm -e .
    .venv-bench/bin/python bench/peers.py --out bench/results/peers.json

Small smoke run: ``--per-class 10 --test 100 --fastai-epochs 1 --keras-epochs 1,1``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import command_line, emit, git_state
from torch import nn
from torchvision import transforms as T

PEERS = ("transferkit", "fastai", "keras-recipe")


# ----------------------------------------------------------------- transferkit
def run_transferkit(data_dir: Path, work: Path, args) -> dict:
    from transferkit.estimator import TransferClassifier

    t0 = time.perf_counter()
    clf = TransferClassifier(
        args.backbone,
        image_size=args.image_size,
        seed=args.seed,
        cache_dir=str(work / "tk-features"),
    )
    clf.fit(data_dir, run_dir=work / "tk-run")
    seconds = time.perf_counter() - t0
    m = clf.metrics_
    return {
        "test_accuracy": m["test_accuracy"],
        "val_accuracy": m.get("val_accuracy"),
        "seconds": seconds,
        "recipe": f"TransferClassifier({args.backbone!r}, image_size={args.image_size}) "
        "strategy auto (default), fresh feature cache, fit(data, run_dir=...)",
        "strategy": m["strategy"],
        "cut": m["cut"],
        "phases": [
            {k: p.get(k) for k in ("name", "epochs_run", "best_epoch", "seconds")}
            for p in m["phases"]
        ],
        "decision": (m.get("decision") or {}).get("reason"),
        "decision_seconds": (m.get("decision") or {}).get("seconds"),
        "val_fingerprint": (clf.split_ or {}).get("val_fingerprint"),
    }


# ---------------------------------------------------------------------- fastai
def timm_weights_file(backbone: str, folder: Path) -> tuple[str, Path]:
    """transferkit's built-in weights saved as a timm state dict, so a timm-name
    learner loads exactly the same ImageNet weights through timm's own path."""
    from safetensors.torch import save_file

    from transferkit.backbones.builtin import BUILTIN, create_builtin_model

    model = create_builtin_model(backbone)
    path = folder / f"{backbone}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return BUILTIN[backbone][0], path


def run_fastai(splits, work: Path, args, crop: tuple[int, int]) -> dict:
    from fastai.vision.all import (
        CategoryBlock,
        CropPad,
        DataBlock,
        ImageBlock,
        IndexSplitter,
        Resize,
        ResizeMethod,
        accuracy,
        aug_transforms,
        set_seed,
        vision_learner,
    )
    from PIL import Image

    resize, size = crop
    classes = list(splits.classes)
    label_of = {e.path: classes[e.label] for e in splits.train + splits.val + splits.test}
    items = [e.path for e in splits.train + splits.val]

    def get_y(path: str) -> str:  # a Python function: fastai's dispatch inspects it
        return label_of[str(path)]

    t0 = time.perf_counter()
    set_seed(args.seed, reproducible=True)
    arch, weights = timm_weights_file(args.backbone, work)
    centre_crop = CropPad(size)
    centre_crop.order = Resize.order + 1  # CropPad's own order (0) would run it first
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=classes)),
        get_y=get_y,
        splitter=IndexSplitter(list(range(len(splits.train), len(items)))),
        # transferkit's eval preprocessing (bicubic resize to S/0.875, centre crop S;
        # identical tensors, checked to 6e-8), for training and evaluation alike
        item_tfms=[
            Resize(resize, method=ResizeMethod.Squish, resamples=(Image.BICUBIC, Image.NEAREST)),
            centre_crop,
        ],
        batch_tfms=aug_transforms(),  # fastai's default augmentation (train only)
    )
    dls = block.dataloaders(items, bs=args.fastai_batch_size)
    learn = vision_learner(
        dls, arch, metrics=accuracy, pretrained_cfg_overlay={"file": str(weights)}
    )
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(args.fastai_epochs)
    _train_loss, val_loss, val_acc = learn.recorder.values[-1][:3]
    test_dl = dls.test_dl([e.path for e in splits.test], with_labels=True)
    with learn.no_bar():
        probs, targets = learn.get_preds(dl=test_dl)
    test_acc = (probs.argmax(1) == targets).float().mean().item()
    seconds = time.perf_counter() - t0
    import fastai

    return {
        "test_accuracy": test_acc,
        "val_accuracy": float(val_acc),
        "seconds": seconds,
        "recipe": f"fastai {fastai.__version__}: vision_learner(dls, {arch!r}, "
        f"metrics=accuracy).fine_tune({args.fastai_epochs}) (defaults: 1 frozen epoch, "
        f"base_lr 2e-3, lr_mult 100, one-cycle), batch {args.fastai_batch_size}, "
        "aug_transforms(), fastai's concat-pool head",
        "epochs": {"frozen": 1, "unfrozen": args.fastai_epochs},
        "val_loss_last": float(val_loss),
    }


# ---------------------------------------------------------------- keras recipe
class KerasStyleModel(nn.Module):
    """base(training=False) -> GlobalAveragePooling2D -> Dropout(0.2) -> Dense."""

    def __init__(self, base: nn.Module, num_features: int, num_classes: int):
        super().__init__()
        self.base = base
        self.dropout = nn.Dropout(0.2)
        self.dense = nn.Linear(num_features, num_classes)
        nn.init.xavier_uniform_(self.dense.weight)  # Keras Dense: glorot_uniform, zero bias
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.dropout(self.base.forward_features(x).mean((2, 3))))

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()  # the guide calls the base with training=False: BN inference mode
        return self


class _Augmented:
    """The guide's augmentation (RandomFlip("horizontal"), RandomRotation(0.1) = up to
    +-36 degrees), then the shared eval preprocessing. Picklable for loader workers."""

    def __init__(self, transform):
        self.transform = transform
        self.channels = transform.channels
        self.aug = T.Compose([T.RandomHorizontalFlip(), T.RandomRotation(36)])

    def __call__(self, img):
        return self.transform(self.aug(img))


def _keras_epoch(model, loader, optimizer=None) -> tuple[float, float]:
    """One pass; trains when an optimizer is given. Returns (mean loss, accuracy)."""
    model.train(optimizer is not None)
    total, correct, loss_sum = 0, 0, 0.0
    grad = torch.enable_grad() if optimizer is not None else torch.inference_mode()
    with grad:
        for x, y in loader:
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
    return loss_sum / total, correct / total


def run_keras_recipe(splits, args) -> dict:
    from transferkit.backbones.builtin import create_builtin_model
    from transferkit.backbones.timm_loader import timm_data_config
    from transferkit.data import ImageDataset, create_loader, create_transform

    frozen_epochs, unfrozen_epochs = args.keras_epochs
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    base = create_builtin_model(args.backbone)
    data_config = timm_data_config(base)  # the backbone's own preprocessing, as in transferkit
    base.reset_classifier(0)
    model = KerasStyleModel(base, base.num_features, len(splits.classes))
    tf = create_transform(data_config, train=False, image_size=args.image_size)
    bs = args.keras_batch_size
    # one loader each; the training one reshuffles every epoch (seeded)
    train_loader = create_loader(
        ImageDataset(splits.train, _Augmented(tf)), batch_size=bs, shuffle=True, seed=args.seed
    )
    val_loader = create_loader(ImageDataset(splits.val, tf), batch_size=bs)
    history = []
    # Keras: base_model.trainable = False; compile(Adam()) -> new optimizer, head only.
    for p in base.parameters():
        p.requires_grad_(False)
    plan = [("frozen", frozen_epochs, 1e-3), ("unfrozen", unfrozen_epochs, 1e-5)]
    for phase, epochs, lr in plan:
        if phase == "unfrozen":  # base_model.trainable = True; compile(Adam(1e-5))
            for p in base.parameters():
                p.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr, eps=1e-7)  # Keras Adam defaults
        for _ in range(epochs):
            started = time.perf_counter()
            train_loss, _ = _keras_epoch(model, train_loader, optimizer)
            val_loss, val_acc = _keras_epoch(model, val_loader)
            history.append(
                {
                    "phase": phase,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_accuracy": val_acc,
                    "seconds": time.perf_counter() - started,
                }
            )
    test_loader = create_loader(ImageDataset(splits.test, tf), batch_size=bs)
    _, test_acc = _keras_epoch(model, test_loader)
    seconds = time.perf_counter() - t0
    phase_seconds = {
        phase: sum(h["seconds"] for h in history if h["phase"] == phase)
        for phase in ("frozen", "unfrozen")
    }
    return {
        "test_accuracy": test_acc,
        "val_accuracy": history[-1]["val_accuracy"] if history else None,
        "seconds": seconds,
        "recipe": "Keras guide in torch: RandomFlip+RandomRotation(0.1) -> base "
        "(training=False) -> GAP -> Dropout(0.2) -> Dense; "
        f"{frozen_epochs} epochs Adam 1e-3 frozen, {unfrozen_epochs} epochs Adam 1e-5 "
        f"all unfrozen, BN inference mode, batch {args.keras_batch_size}, last epoch kept",
        "epochs": {"frozen": frozen_epochs, "unfrozen": unfrozen_epochs},
        "phase_seconds": phase_seconds,
    }


# ------------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fastai-epochs", type=int, default=10, help="fine_tune(N): 1 frozen + N")
    p.add_argument("--fastai-batch-size", type=int, default=64, help="fastai's default bs")
    p.add_argument("--keras-epochs", default="20,10", help="frozen,unfrozen epochs")
    p.add_argument("--keras-batch-size", type=int, default=32)
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(PEERS))
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    args.keras_epochs = tuple(int(v) for v in args.keras_epochs.split(","))
    return args


def run_peer(name: str, data_dir: Path, splits, crop, work: Path, args) -> dict:
    if name == "transferkit":
        return run_transferkit(data_dir, work, args)
    if name == "keras-recipe":
        return run_keras_recipe(splits, args)
    try:
        import fastai  # noqa: F401
    except ImportError:
        return {
            "skipped": "fastai is not installed here: run this script with the bench "
            "venv (see the module docstring)"
        }
    return run_fastai(splits, work, args, crop)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader workers): less
    sensitive than wall time to other jobs on a shared machine."""
    gc.collect()  # finalise dropped loaders, so their workers exit and are counted
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    args = parse_args(argv)
    load_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="tk-peers-"))
    # A fresh transferkit cache root (scan verdicts too): transferkit runs cold.
    os.environ["TRANSFERKIT_CACHE_DIR"] = str(work / "tk-cache")
    os.environ.setdefault("TRANSFERKIT_PROGRESS", "0")
    from transferkit.backbones import create_backbone
    from transferkit.data import ScanOptions, create_transform, load_data, write_dataset

    data_dir = work / "data"
    write_dataset("fashion-mnist", data_dir, per_class=args.per_class, test=args.test, seed=0)
    names = args.only.split(",") if args.only else list(PEERS)
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        sys.exit(f"unknown peer {unknown[0]!r}; options: {', '.join(PEERS)}")
    # The split transferkit makes (same fraction and seed), for the peers; scanned with
    # its own verdict cache so transferkit's scan stays cold.
    splits = load_data(
        data_dir,
        val_split=0.2,
        seed=args.seed,
        scan=ScanOptions(cache_dir=str(work / "harness-scan")),
    )
    tf = create_transform(
        create_backbone(args.backbone).data_config, train=False, image_size=args.image_size
    )
    ops = tf.ops.transforms
    crop = (ops[0].size, ops[1].size[0])  # (resize, centre crop) of the eval view
    threads = torch.get_num_threads()
    results: dict[str, dict] = {}
    for name in names:
        torch.set_num_threads(threads)  # a peer may change it; each starts the same
        cpu_start = cpu_seconds()
        results[name] = run_peer(name, data_dir, splits, crop, work, args)
        if "seconds" in results[name]:
            results[name]["cpu_seconds"] = cpu_seconds() - cpu_start
        if name == "transferkit":  # the peers must train and validate on its split
            same = results[name].pop("val_fingerprint") == splits.split.get("val_fingerprint")
            results[name]["same_split_as_peers"] = same
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    summary = {
        "benchmark": "peers",
        "transferkit_commit": git_state(),
        "command": command_line("bench/peers.py", argv),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "only")},
        "data": {
            "dataset": "fashion-mnist",
            "per_class": args.per_class,
            "test": args.test,
            "n_train": len(splits.train),
            "n_val": len(splits.val),
            "n_test": len(splits.test),
        },
        "machine": machine_facts(threads, load_start),
        "results": results,
    }
    summary.update(comparisons(results))
    emit(summary, args.out)
    return 0


def machine_facts(threads: int, load_start: float) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
    }


def comparisons(results: dict) -> dict:
    """Ratios against each peer, and whether transferkit met its targets: at least
    each peer's test accuracy, and at most 0.8x fastai's wall time."""
    tk = results.get("transferkit")
    out: dict = {}
    if not tk:
        return out
    targets = {}
    for peer in ("fastai", "keras-recipe"):
        r = results.get(peer)
        if not r or "test_accuracy" not in r:
            continue
        out[f"accuracy_points_vs_{peer}"] = 100 * (tk["test_accuracy"] - r["test_accuracy"])
        out[f"seconds_ratio_vs_{peer}"] = tk["seconds"] / r["seconds"]
        out[f"cpu_seconds_ratio_vs_{peer}"] = tk["cpu_seconds"] / r["cpu_seconds"]
        targets[f"test_accuracy >= {peer}"] = bool(tk["test_accuracy"] >= r["test_accuracy"])
    if "seconds_ratio_vs_fastai" in out:
        targets["seconds <= 0.8x fastai"] = bool(out["seconds_ratio_vs_fastai"] <= 0.8)
    out["targets_met"] = targets
    return out


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
