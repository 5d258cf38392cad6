"""The on-disk feature store: rows keyed by content digest, never stale, never half
written, and untouched by a store that may not write."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from transferkit.features.store import STRAY_AGE_S, FeatureStore


def test_put_lookup_assemble_round_trip_in_any_order(tmp_path):
    store = FeatureStore(tmp_path)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert store.put("k", ["a", "b", "c", "d"], rows) == 4
    assert store.put("k", ["b", "e"], np.ones((2, 3), np.float32)) == 1  # b is known
    found = store.lookup("k", ["d", "e", "a", "zz"])
    assert list(found.missing) == ["zz"] and found.missing["zz"] == 3
    out = store.assemble("k", ["d", "e", "a"], found.where)
    np.testing.assert_array_equal(out, [rows[3], [1, 1, 1], rows[0]])
    assert store.stats.hits == 3


def test_keys_keep_models_apart(tmp_path):
    store = FeatureStore(tmp_path)
    store.put("model-a", ["x"], np.zeros((1, 2), np.float32))
    assert list(store.lookup("model-b", ["x"]).missing) == ["x"]


def test_a_damaged_shard_is_deleted_and_its_rows_are_missing_again(tmp_path):
    store = FeatureStore(tmp_path)
    store.put("k", ["a", "b"], np.ones((2, 4), np.float32))
    (npy,) = (tmp_path / "k").glob("*.npy")
    raw = bytearray(npy.read_bytes())
    raw[-4:] = b"\xff" * 4
    npy.write_bytes(bytes(raw))
    found = store.lookup("k", ["a", "b"])
    assert sorted(found.missing) == ["a", "b"] and store.stats.rebuilt_shards == 1
    assert not list((tmp_path / "k").iterdir())


def test_an_array_without_its_json_is_never_used_and_goes_once_dead(tmp_path):
    store = FeatureStore(tmp_path)
    store.put("k", ["a"], np.ones((1, 2), np.float32))
    (meta,) = (tmp_path / "k").glob("*.json")
    meta.unlink()  # a crash between writing the array and its JSON
    assert list(store.lookup("k", ["a"]).missing) == ["a"]
    (npy,) = (tmp_path / "k").glob("*.npy")  # young: its writer may still be committing
    old = time.time() - STRAY_AGE_S - 1
    os.utime(npy, (old, old))  # its writer is long gone
    assert list(store.lookup("k", ["a"]).missing) == ["a"]
    assert not list((tmp_path / "k").glob("*.npy"))


def test_a_read_only_store_neither_writes_nor_deletes(tmp_path):
    FeatureStore(tmp_path).put("k", ["a"], np.ones((1, 2), np.float32))
    (meta,) = (tmp_path / "k").glob("*.json")
    meta.write_text(json.dumps({"digests": ["a"], "sha256": "wrong"}))
    reader = FeatureStore(tmp_path, writable=False)
    assert reader.put("k", ["b"], np.ones((1, 2), np.float32)) == 0
    assert list(reader.lookup("k", ["a"]).missing) == ["a"]
    assert meta.is_file() and len(list((tmp_path / "k").iterdir())) == 2


def test_the_default_feature_folder_is_under_the_cache_folder_xdg_included(tmp_path, monkeypatch):
    from transferkit.data import cache_root
    from transferkit.features import default_cache_dir

    monkeypatch.delenv("TRANSFERKIT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == cache_root() / "features" == tmp_path / "xdg/transferkit/features"
