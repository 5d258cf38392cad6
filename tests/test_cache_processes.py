"""Processes sharing one cache folder: two `transferkit fit` commands at once both
succeed, and a shard that another process is committing is never deleted under it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import FAST_FIT
from transferkit.features import store as store_module
from transferkit.features.store import FeatureStore

SRC = str(Path(store_module.__file__).parents[2])  # the src/ folder under test
FIT_ARGS = [
    "--backbone", "test_resnet", "--weights", "none", "--strategy", "feature-extract",
    "--cut", "layer4", "--image-size", str(FAST_FIT["image_size"]), "--head-epochs", "5",
    "--lr", str(FAST_FIT["lr"]), "--batch-size", str(FAST_FIT["batch_size"]),
    "--workers", "0", "--json",
]  # fmt: skip


def _env(cache_home):
    env = dict(os.environ, TRANSFERKIT_PROGRESS="0", TRANSFERKIT_CACHE_DIR=str(cache_home))
    env.pop("RANK", None)
    return env


def _fit(data, out, shared):
    cmd = [sys.executable, "-m", "transferkit", "fit", str(data), "--out", str(out)]
    return subprocess.Popen(
        [*cmd, "--cache-dir", str(shared / "features"), *FIT_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(shared),  # the data scan's cache is shared too
    )


@pytest.mark.slow
def test_two_fits_at_once_on_one_cache_folder_both_succeed(tmp_path, data):
    shared = tmp_path / "shared"
    procs = [_fit(data, tmp_path / f"run{i}", shared) for i in range(2)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err and "cache" not in err.lower()
    metrics = [json.loads(out) for _, out, _ in results]
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]  # same features
    for m in metrics:
        assert sum(m["feature_cache"][k] for k in ("hits", "extracted")) > 0
        assert m["feature_cache"]["rebuilt_shards"] == 0
    # the cache both left behind is whole: every array indexed and intact, no leftovers
    store = FeatureStore(shared / "features")
    keys = {npy.parent.name for npy in (shared / "features").glob("*/*.npy")}
    assert keys and not list((shared / "features").rglob("*.tmp"))
    for key in keys:
        arrays = list((shared / "features" / key).glob("*.npy"))
        assert len(store.shards(key)) == len(arrays)
    assert store.stats.rebuilt_shards == 0


WRITER = """
import os, sys, time, types
import numpy as np

root, ready, go, src = sys.argv[1:5]
for name in ("transferkit", "transferkit.features"):  # the store alone: no torch to load
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__path__ = [os.path.join(src, *name.split("."))]
from transferkit.features.store import FeatureStore

real_replace = os.replace

def replace(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".npy"):  # in place, not indexed yet: wait for the other process
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)

os.replace = replace
FeatureStore(root).put("k", ["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3))
"""


def test_a_shard_another_process_is_committing_survives_this_ones_cleanup(tmp_path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(WRITER),
            str(tmp_path / "store"),
            str(ready),
            str(go),
            SRC,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists(), writer.stderr.read() if writer.poll() is not None else "timed out"
        (npy,) = (tmp_path / "store" / "k").glob("*.npy")
        old = time.time() - store_module.STRAY_AGE_S - 60
        os.utime(npy, (old, old))  # looks long abandoned; only its writer's lock says otherwise
        assert sorted(FeatureStore(tmp_path / "store").lookup("k", ["a", "b"]).missing) == [
            "a",
            "b",
        ]
        assert npy.exists()
    finally:
        go.touch()
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    found = FeatureStore(tmp_path / "store").lookup("k", ["a", "b"])
    assert not found.missing
    np.testing.assert_array_equal(
        FeatureStore(tmp_path / "store").assemble("k", ["a", "b"], found.where),
        np.arange(6, dtype=np.float32).reshape(2, 3),
    )
