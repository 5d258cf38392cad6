"""The distributed and GPU path: torchrun DDP and the compute settings.

The end-to-end test runs a real 2-process gloo job on CPU with torchrun: it finishes,
only rank 0 writes (every process records the files it opens for writing, through
a Python audit hook), and the result matches a 1-process run with the same global
batch. The other tests are in-process and take well under a second each.

Tolerance of the 1-vs-2-process comparison: the two runs see the same images in the
same global batches and start from the same weights, so they differ only in the order
of floating-point sums: one process averages the loss over 8 images; two average 4
each and DDP averages their gradients. Adam divides by the gradients' running RMS,
which turns those last-bit differences into relative weight changes of about 1e-7 per
step; measured after 6 steps: 2.5e-6 at most. ``WEIGHT_TOL = 1e-4`` leaves room for
other CPUs and thread counts; accuracy must be equal.
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

from helpers import TinyNet, make_image_folder
from transferkit import InputError
from transferkit.compute import Compute, create_compute, resolve_device, resolve_precision
from transferkit.distributed import (
    SINGLE,
    Collective,
    Environment,
    GroupCollective,
    ShardSampler,
    environment,
    setup,
    teardown,
)
from transferkit.estimator import TransferClassifier
from transferkit.features import model_key

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
    "--epochs",
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

from safetensors.torch import save_file
from transferkit import estimator
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
rc = main(sys.argv[5:])
clf = fitted[0]
save_file({k: v.contiguous() for k, v in clf.model_.state_dict().items()},
          str(out / f"weights{rank}.safetensors"))
doc = {"rc": rc, "touched": touched, "extracted": extracted[0], "metrics": clf.metrics_}
(out / f"rank{rank}.json").write_text(json.dumps(doc))
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


@pytest.mark.slow
def test_two_process_gloo_fine_tune_matches_one_process_and_only_rank0_writes(tmp_path):
    from transferkit.cli import main

    data = make_image_folder(tmp_path / "data", per_class=10, size=16)  # 24 train, 6 val
    out, run, cache = tmp_path / "out", tmp_path / "run2", tmp_path / "cache2"
    home = tmp_path / "home-cache"
    out.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    fit = ["fit", str(data), "--out", str(run), "--cache-dir", str(cache), *FIT_ARGS]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    watched = [str(run), str(cache), str(home)]
    proc = subprocess.run(
        [*torchrun, str(worker), str(out), *watched, *fit],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(home),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rc"] for r in ranks] == [0, 0]

    # only rank 0 wrote: run directory, checkpoints, feature cache, train.log, scan cache
    assert ranks[1]["touched"] == []
    paths = [Path(p) for entry in ranks[0]["touched"] for p in entry[1:]]
    assert {"model.safetensors", "config.json", "train.log", "metrics.json"} <= {
        p.name for p in paths
    }
    assert any(p.parent.parent == cache for p in paths)  # a feature shard
    assert any(p.parent == home / "scan" for p in paths)  # the data scan's verdicts

    # extraction was shared: each process ran the backbone on its own half
    assert ranks[0]["extracted"] == ranks[1]["extracted"] == 15

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
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= WEIGHT_TOL, worst
    # the sharded extraction stored every image's own features (rows match digests)
    f1, f2 = _cache_rows(cache1), _cache_rows(cache)
    assert f1.keys() == f2.keys() and len(f1) == 30
    assert max(float(np.abs(f1[d] - f2[d]).max()) for d in f1) <= 1e-5


# ------------------------------------------------------------ collectives, in-process


class _Rank(Collective):
    """A process's view of the job without a process group (samplers, shards)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world_size = rank, world


def test_global_batches_do_not_depend_on_the_process_count():
    data = list(range(24))
    for epoch in range(3):
        one = SINGLE.train_sampler(data, seed=5)
        one.set_epoch(epoch)
        order = list(one)
        shares = []
        for rank in (0, 1):
            s = _Rank(rank, 2).train_sampler(data, seed=5)
            s.set_epoch(epoch)
            shares.append(list(s))
        for step in range(3):  # global batch 8 = 4 per process
            global_batch = shares[0][step * 4 : step * 4 + 4] + shares[1][step * 4 : step * 4 + 4]
            assert sorted(global_batch) == sorted(order[step * 8 : step * 8 + 8])


def test_evaluation_shards_hold_every_item_once():
    seen = [i for r in range(3) for i in ShardSampler(7, r, 3)]
    assert sorted(seen) == list(range(7))
    assert [len(ShardSampler(7, r, 3)) for r in range(3)] == [3, 2, 2]
    assert _Rank(1, 3).shard(list("abcdefg")) == ["b", "e"]


def test_batch_size_is_the_global_batch():
    assert _Rank(0, 2).per_process_batch(8) == 4
    assert SINGLE.per_process_batch(7) == 7
    with pytest.raises(InputError, match="global batch"):
        _Rank(0, 3).per_process_batch(8)


def test_one_process_changes_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert environment() == Environment(0, 1, 0)
    assert setup(torch.device("cpu")) is SINGLE and not SINGLE.active
    net = torch.nn.Linear(2, 2)
    assert SINGLE.wrap(net, torch.device("cpu")) is net
    assert SINGLE.sum([1, 2.5]) == [1.0, 2.5] and SINGLE.all_true(True)
    assert SINGLE.broadcast_json({"a": (1, 2)}) == {"a": [1, 2]}
    rows = np.ones((3, 2), np.float32)
    assert SINGLE.gather_rows(rows)[0] is rows


def test_environment_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = environment()
    assert env == Environment(1, 2, 1) and not env.is_main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match="RANK=2"):
        environment()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match="not an integer"):
        environment()


def test_group_collective_round_trips_in_a_one_process_gloo_group(tmp_path, monkeypatch):
    """The tensor and JSON transport of GroupCollective, in a real gloo group of one."""
    import torch.distributed as dist

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        c = setup(torch.device("cpu"))
        assert isinstance(c, GroupCollective) and not c.created  # the caller's group
        assert c.broadcast_json({"x": [1, 2.5, None], "y": "z"}) == {"x": [1, 2.5, None], "y": "z"}
        assert c.sum([1, 2]) == [1.0, 2.0] and c.all_true(True) and not c.all_true(False)
        tensors = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
        got = c.broadcast_tensors(tensors)
        assert all(torch.equal(got[k], tensors[k]) for k in tensors)
        rows = np.arange(6, dtype=np.float32).reshape(3, 2)
        (back,) = c.gather_rows(rows)
        np.testing.assert_array_equal(back, rows)
        net = TinyNet()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        c.broadcast_module(net)
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        c.barrier()
        teardown(c)
        assert dist.is_initialized()  # not ours to destroy
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------- GPU path on CPU


def test_cpu_default_is_float32_eager_in_nhwc():
    # NHWC because oneDNN's convolutions are faster in it (compute.create_compute)
    c = create_compute(torch.device("cpu"), "auto", False)
    assert c == Compute(torch.device("cpu"), "fp32", channels_last=True, compile=False)
    x = torch.ones(2, 3, 4, 4)
    assert c.to_device(x).is_contiguous(memory_format=torch.channels_last)
    assert c.to_device(torch.ones(2, 3)).is_contiguous()  # only image batches
    with c.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_precision_and_device_choices():
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(InputError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="precision"):
        TransferClassifier(TinyNet(), precision="fp16").to_config()


def test_channels_last_model_and_batches_still_save(tmp_path):
    from transferkit.atomic import save_tensors

    c = Compute(torch.device("cpu"), channels_last=True)
    net = c.prepare(TinyNet())
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = c.to_device(torch.rand(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert c.to_device(torch.rand(2, 3)).is_contiguous()
    save_tensors(tmp_path / "w.safetensors", net.state_dict())
    back = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(back["stem.weight"], net.stem.weight)


def test_bf16_precision_keys_the_feature_cache_apart():
    net = TinyNet()
    from transferkit.backbones import create_backbone

    bb = create_backbone(net, cut="blocks.2")
    fp32 = model_key(bb, bb.data_config, 16, "avg")
    assert model_key(bb, bb.data_config, 16, "avg", "fp32") == fp32  # old caches stay valid
    assert model_key(bb, bb.data_config, 16, "avg", "bf16") != fp32


FAST = {
    "image_size": 16,
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "epochs": 3,
    "patience": 3,
    "fine_tune_epochs": 1,
    "batch_size": 8,
    "workers": 0,
    "cut": "blocks.2",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=6, size=16)


def test_bf16_autocasts_extraction_and_fine_tuning_on_cpu(tmp_path, data):
    torch.manual_seed(0)
    net = TinyNet()
    seen = []
    net.stem.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype))
    )
    clf = TransferClassifier(
        net, "fine-tune", precision="bf16", cache_dir=str(tmp_path / "c"), **FAST
    ).fit(data)
    during_fit = seen[1:]  # the first call is the backbone's shape trace
    assert during_fit and all(on and dtype == torch.bfloat16 for on, dtype in during_fit)
    assert all(p.dtype == torch.float32 for p in clf.model_.parameters())
    assert np.isfinite(clf.metrics_["val_loss"])


def test_compile_flag_reaches_extraction_and_fine_tuning(tmp_path, data, monkeypatch):
    compiled = []

    def fake_compile(fn, *args, **kwargs):  # real compilation takes a minute on CPU
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    torch.manual_seed(0)
    TransferClassifier(
        TinyNet(), "fine-tune", compile=True, cache_dir=str(tmp_path / "c"), **FAST
    ).fit(data)
    names = [getattr(fn, "__name__", type(fn).__name__) for fn in compiled]
    assert "forward_features" in names and "TransferModel" in names
    compiled.clear()
    TransferClassifier(TinyNet(), "fine-tune", cache_dir=str(tmp_path / "d"), **FAST).fit(data)
    assert compiled == []  # off by default


def test_fit_flags_for_the_gpu_path():
    from transferkit.cli import build_parser, fit_config_from_args

    parse = build_parser().parse_args
    cfg = fit_config_from_args(
        parse(["fit", "d", "--out", "r", "--precision", "bf16", "--compile"])
    )
    assert (cfg.precision, cfg.compile) == ("bf16", True)
    cfg = fit_config_from_args(parse(["fit", "d", "--out", "r"]))
    assert (cfg.precision, cfg.compile) == ("auto", False)


@pytest.mark.slow
def test_run_interrupted_in_one_process_resumes_under_torchrun_module_launch(tmp_path):
    """``--resume`` across process counts: rank 0 reads the checkpoint and hands weights,
    optimizer and scheduler state to the other process; launched as ``-m transferkit``."""
    from transferkit.heads import HeadConfig
    from transferkit.training import EpochEndHook, TrainingInterrupted

    data = make_image_folder(tmp_path / "data", per_class=10, size=16)
    params = dict(
        weights="none",
        image_size=16,
        epochs=5,
        fine_tune_epochs=3,
        batch_size=8,
        workers=0,
        augment=False,
        lr=0.01,
        fine_tune_lr=0.001,
        head=HeadConfig(dropout=0.0),
    )

    def stop_after_first_fine_tune_epoch(phase, epoch):
        if phase == "fine-tune" and epoch == 1:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    clf = TransferClassifier("test_resnet", "fine-tune", cache_dir=str(tmp_path / "c"), **params)
    with pytest.raises(TrainingInterrupted):
        clf.fit(data, run_dir=run, callbacks=[EpochEndHook(stop_after_first_fine_tune_epoch)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "transferkit", "fit", str(data), "--out", str(run), "--resume"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=_clean_env(tmp_path / "home")
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("run saved to") == 1  # one report, from rank 0
    assert "resuming phase fine-tune after epoch 1" in (run / "train.log").read_text()

    whole = tmp_path / "whole"
    TransferClassifier("test_resnet", "fine-tune", cache_dir=str(tmp_path / "c"), **params).fit(
        data, run_dir=whole
    )
    a, b = load_file(str(run / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= WEIGHT_TOL
    got = json.loads((run / "metrics.json").read_text())
    want = json.loads((whole / "metrics.json").read_text())
    assert got["phases"][1]["epochs_run"] == want["phases"][1]["epochs_run"] == 3
    assert got["val_accuracy"] == want["val_accuracy"]
