"""Several processes share one feature store: a shard that another writer has not
indexed yet is never deleted; only files that are certainly dead are cleaned up."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from transferkit.features import store as store_module
from transferkit.features.store import FeatureStore

fcntl = pytest.importorskip("fcntl")


def _backdate(*paths, seconds=None):
    seconds = store_module.STRAY_AGE_S + 60 if seconds is None else seconds
    old = time.time() - seconds
    for p in paths:
        os.utime(p, (old, old))


def test_a_shard_not_yet_indexed_survives_another_stores_scan(tmp_path, monkeypatch):
    writer, other = FeatureStore(tmp_path), FeatureStore(tmp_path)
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".npy"):  # the array is in place, its index is not yet
            _backdate(dst)  # however old it looks, its writer is alive
            seen.append(other.lookup("k", ["a", "b"]))

    monkeypatch.setattr(os, "replace", replace)
    assert writer.put("k", ["a", "b"], rows) == 2
    monkeypatch.undo()
    assert len(seen) == 1 and sorted(seen[0].missing) == ["a", "b"]  # not used half-done
    reader = FeatureStore(tmp_path)
    found = reader.lookup("k", ["a", "b"])
    assert not found.missing
    np.testing.assert_array_equal(reader.assemble("k", ["a", "b"], found.where), rows)


def test_stray_files_are_removed_only_when_certainly_dead(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir()
    fresh, dead, held = folder / "fresh.npy", folder / "dead.npy", folder / "held.npy"
    dead_tmp = folder / ".0123456789abcdef.npy.tmp"  # a writer that died mid-write
    for p in (fresh, dead, held, dead_tmp):
        p.write_bytes(b"rows")
    _backdate(dead, held, dead_tmp)
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer (locks are per open file)
    try:
        assert list(FeatureStore(tmp_path).lookup("k", ["a"]).missing) == ["a"]
        assert fresh.exists() and held.exists()  # too young to judge / writer alive
        assert not dead.exists() and not dead_tmp.exists()
    finally:
        os.close(fd)
    FeatureStore(tmp_path).lookup("k", ["a"])
    assert not held.exists() and fresh.exists()


def test_a_shard_removed_by_someone_else_is_just_missing(tmp_path):
    store = FeatureStore(tmp_path)
    store.put("k", ["a"], np.ones((1, 2), np.float32))
    (npy,) = (tmp_path / "k").glob("*.npy")
    npy.unlink()  # another process healed it away between our glob and our read
    assert list(store.lookup("k", ["a"]).missing) == ["a"]
    assert store.stats.rebuilt_shards == 0
