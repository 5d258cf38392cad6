"""A real 2-process torchrun job on CPU (gloo): it finishes, only rank 0 writes
(every process records the files it opens for writing, through a Python audit hook),
the result matches a 1-process run with the same global batch, and a run one process
started and Ctrl-C interrupted resumes under two.

Tolerance of the 1-vs-2-process comparison: the two runs see the same images in the
same global batches and start from the same weights, so they differ only in the order
of floating-point sums: one process averages the loss over 8 images; two average 4
each and DDP averages their gradients. Adam divides by the gradients' running RMS,
which turns those last-bit differences into relative weight changes of about 1e-7 per
step; measured after 6 steps: 2.5e-6 at most. The linear head before fine-tuning is
fitted to convergence (L-BFGS) on features the two runs extract in other batch
compositions (equal to about 1e-6), so it agrees to the solver's tolerance relative to
its weights' scale (on this separable toy data about 70): measured 4e-5 of it. Weights
are compared relative to each tensor's largest value (at least 1); ``WEIGHT_TOL =
1e-4`` leaves room for other CPUs and thread counts; accuracy must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import make_image_folder
from transferkit.estimator import TransferClassifier

WEIGHT_TOL = 1e-4
LOSS_TOL = 1e-4

FIT_ARGS = [
    "--backbone",
    "test_resnet",
    "--weights",
    "none",
    "--image-size",
    "16",
    "--strategy",
    "fine-tune",
    "--head-epochs",
    "5",
    "--fine-tune-epochs",
    "2",
    "--batch-size",
    "8",
    "--lr",
    "0.01",
    "--fine-tune-lr",
    "0.001",
    "--dropout",
    "0",  # dropout and augmentation draw per-process random numbers: off to compare
    "--no-augment",
    "--workers",
    "0",
    "--seed",
    "0",
]

# Runs `transferkit fit` through the CLI in each torchrun process and records what that
# process opened for writing, renamed, created or deleted under the run and cache dirs.
WORKER = r"""
import json, os, sys
from pathlib import Path

out, watched = Path(sys.argv[1]), [os.path.realpath(p) for p in sys.argv[2:5]]
rank = int(os.environ.get("RANK", "0"))
touched = []

def under(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except TypeError:  # a file descriptor
        return False
    return any(p == w or p.startswith(w + os.sep) for w in watched)

WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

def audit(event, args):
    if event == "open" and isinstance(args[2], int) and args[2] & WRITE and under(args[0]):
        touched.append([event, os.fsdecode(args[0])])
    elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.truncate"):
        paths = args[:2] if event == "os.rename" else args[:1]
        if any(under(p) for p in paths):
            touched.append([event, *[os.fsdecode(p) for p in paths]])

sys.addaudithook(audit)

import torch.distributed as dist
from safetensors.torch import save_file
from transferkit import estimator

# The group is ours, so both fits below use it as it is (and leave it to us): a
# process group destroyed and created again in one process is not something torchrun's
# rendezvous supports.
dist.init_process_group("gloo")
from transferkit.cli import main
from transferkit.features import cache as feature_cache

extracted, fitted = [0], []
iter_features = feature_cache.iter_features

def counting(*args, **kwargs):
    for batch in iter_features(*args, **kwargs):
        extracted[0] += len(next(iter(batch.values())))
        yield batch

feature_cache.iter_features = counting
fit = estimator.TransferClassifier.fit

def recording_fit(self, *args, **kwargs):
    fitted.append(self)
    return fit(self, *args, **kwargs)

estimator.TransferClassifier.fit = recording_fit
args = sys.argv[5:]
split = args.index("--then")
rc = main(args[:split])
clf = fitted[0]
save_file({k: v.contiguous() for k, v in clf.model_.state_dict().items()},
          str(out / f"weights{rank}.safetensors"))
doc = {"rc": rc, "touched": touched, "extracted": extracted[0], "metrics": clf.metrics_}

# Then, in the same processes: resume a run that one process started and Ctrl-C ended.
import contextlib, io
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    doc["resume_rc"] = main(args[split + 1:])
doc["resume_stdout"] = printed.getvalue()
(out / f"rank{rank}.json").write_text(json.dumps(doc))
dist.destroy_process_group()
"""


def _clean_env(cache_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["TRANSFERKIT_PROGRESS"] = "0"
    env["TRANSFERKIT_CACHE_DIR"] = str(cache_home)  # the data scan's verdict cache
    return env


def _cache_rows(cache: Path) -> dict[str, np.ndarray]:
    rows = {}
    for meta in cache.rglob("*.json"):
        array = np.load(meta.with_suffix(".npy"))
        rows.update(zip(json.loads(meta.read_text())["digests"], array, strict=True))
    return rows


RESUME_PARAMS = dict(
    weights="none",
    image_size=16,
    head_epochs=5,
    fine_tune_epochs=3,
    batch_size=8,
    workers=0,
    augment=False,
    lr=0.01,
    fine_tune_lr=0.001,
)


@pytest.fixture(scope="module")
def torchrun_job(tmp_path_factory):
    """One real 2-process gloo job on CPU (starting torchrun and its processes costs
    seconds, so both scenarios share it): a fresh fine-tuning fit through the CLI,
    recording what each process wrote; then, in the same processes, ``--resume`` of a
    run that a single process started and Ctrl-C interrupted."""
    from transferkit.heads import HeadConfig
    from transferkit.training import EpochEndHook, TrainingInterrupted

    root = tmp_path_factory.mktemp("torchrun")
    data = make_image_folder(root / "data", per_class=10, size=16)  # 24 train, 6 val
    paths = {
        "root": root,
        "data": data,
        "out": root / "out",
        "run": root / "run2",
        "cache": root / "cache2",
        "home": root / "home-cache",
        "resumed": root / "resumed",
    }
    paths["out"].mkdir()

    def stop_after_first_fine_tune_epoch(phase, epoch):
        if phase == "fine-tune" and epoch == 1:
            raise KeyboardInterrupt

    params = {**RESUME_PARAMS, "head": HeadConfig(dropout=0.0), "cache_dir": str(root / "c")}
    with pytest.raises(TrainingInterrupted):
        TransferClassifier("test_resnet", "fine-tune", **params).fit(
            data,
            run_dir=paths["resumed"],
            callbacks=[EpochEndHook(stop_after_first_fine_tune_epoch)],
        )
    worker = root / "worker.py"
    worker.write_text(WORKER)
    fit = ["fit", str(data), "--out", str(paths["run"]), "--cache-dir", str(paths["cache"])]
    resume = ["fit", str(data), "--out", str(paths["resumed"]), "--resume"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    watched = [str(paths["run"]), str(paths["cache"]), str(paths["home"])]
    proc = subprocess.run(
        [*torchrun, str(worker), str(paths["out"]), *watched, *fit, *FIT_ARGS, "--then", *resume],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(paths["home"]),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    paths["ranks"] = [json.loads((paths["out"] / f"rank{r}.json").read_text()) for r in (0, 1)]
    return paths


def _relative_difference(a: dict, b: dict) -> float:
    """The largest weight difference, each tensor's relative to its scale (>= 1)."""
    return max(
        float((a[k].double() - b[k].double()).abs().max()) / max(1.0, float(a[k].abs().max()))
        for k in a
    )


@pytest.mark.slow
def test_two_process_gloo_fine_tune_matches_one_process_and_only_rank0_writes(
    torchrun_job, tmp_path
):
    from transferkit.cli import main

    job = torchrun_job
    data, out, run, cache, home = (job[k] for k in ("data", "out", "run", "cache", "home"))
    ranks = job["ranks"]
    assert [r["rc"] for r in ranks] == [0, 0]

    # only rank 0 wrote: run directory, checkpoints, feature cache, train.log, scan cache
    assert ranks[1]["touched"] == []
    paths = [Path(p) for entry in ranks[0]["touched"] for p in entry[1:]]
    assert {"model.safetensors", "config.json", "train.log", "metrics.json"} <= {
        p.name for p in paths
    }
    assert any(p.parent.parent == cache for p in paths)  # a feature shard
    assert any(p.parent == home / "scan" for p in paths)  # the data scan's verdicts

    # extraction was shared: each process ran the backbone on its own half of the 24
    # training images (the head is fitted on them; validation judges the model)
    assert ranks[0]["extracted"] == ranks[1]["extracted"] == 12

    # both processes end with the same model and metrics
    w0, w1 = (
        load_file(str(out / "weights0.safetensors")),
        load_file(str(out / "weights1.safetensors")),
    )
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert ranks[0]["metrics"] == ranks[1]["metrics"]

    # the same command in one process, the same global batch: the same result
    single, cache1 = tmp_path / "run1", tmp_path / "cache1"
    assert (
        main(["fit", str(data), "--out", str(single), "--cache-dir", str(cache1), *FIT_ARGS]) == 0
    )
    m1 = json.loads((single / "metrics.json").read_text())
    m2 = json.loads((run / "metrics.json").read_text())
    assert [p["epochs_run"] for p in m1["phases"]] == [p["epochs_run"] for p in m2["phases"]]
    assert m2["phases"][1]["name"] == "fine-tune" and m2["phases"][1]["epochs_run"] == 2
    assert m1["val_accuracy"] == m2["val_accuracy"]
    assert abs(m1["val_loss"] - m2["val_loss"]) <= LOSS_TOL
    a, b = load_file(str(single / "model.safetensors")), load_file(str(run / "model.safetensors"))
    worst = _relative_difference(a, b)
    assert worst <= WEIGHT_TOL, worst
    # the sharded extraction stored every image's own features (rows match digests)
    f1, f2 = _cache_rows(cache1), _cache_rows(cache)
    assert f1.keys() == f2.keys() and len(f1) == 24
    assert max(float(np.abs(f1[d] - f2[d]).max()) for d in f1) <= 1e-5


@pytest.mark.slow
def test_run_interrupted_in_one_process_resumes_under_torchrun(torchrun_job, tmp_path):
    """``--resume`` across process counts: rank 0 reads the checkpoint and hands weights,
    optimizer and scheduler state to the other process; it ends where an
    uninterrupted one-process run ends."""
    from transferkit.heads import HeadConfig

    job = torchrun_job
    run = job["resumed"]
    assert [r["resume_rc"] for r in job["ranks"]] == [0, 0]
    printed = [r["resume_stdout"] for r in job["ranks"]]
    assert printed[0].count("run saved to") == 1 and printed[1] == ""  # one report, rank 0
    assert "resuming phase fine-tune after epoch 1" in (run / "train.log").read_text()

    whole = tmp_path / "whole"
    params = {**RESUME_PARAMS, "head": HeadConfig(dropout=0.0), "cache_dir": str(tmp_path / "c")}
    TransferClassifier("test_resnet", "fine-tune", **params).fit(job["data"], run_dir=whole)
    a, b = load_file(str(run / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert _relative_difference(a, b) <= WEIGHT_TOL
    got = json.loads((run / "metrics.json").read_text())
    want = json.loads((whole / "metrics.json").read_text())
    assert got["phases"][1]["epochs_run"] == want["phases"][1]["epochs_run"] == 3
    assert got["val_accuracy"] == want["val_accuracy"]
