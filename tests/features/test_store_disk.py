"""A cache folder that is full or read-only: the cache is an optimisation, so writing
stops with one warning naming the folder and the reason, and the rows stay in memory.
Nothing is written through a memory map, so a full disk is an error, never SIGBUS."""

from __future__ import annotations

import errno
import logging
import os

import numpy as np
import pytest
import torch

from helpers import FAST_FIT, TinyNet
from transferkit.estimator import TransferClassifier
from transferkit.features import store as store_module
from transferkit.features.store import FeatureStore


@pytest.fixture
def warnings_logged():
    """Warnings of the "transferkit" loggers (the CLI stops them reaching caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transferkit")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _fail_writes(monkeypatch, code, after=0):
    """The cache's file writes fail with ``code`` once ``after`` writes have worked."""
    real, calls = store_module._write_at, []

    def write(fd, data, offset):
        calls.append(offset)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(fd, data, offset)

    monkeypatch.setattr(store_module, "_write_at", write)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_failing_write_keeps_the_rows_in_memory_and_warns_once(
    tmp_path, monkeypatch, warnings_logged, code
):
    _fail_writes(monkeypatch, code)
    store = FeatureStore(tmp_path / "cache")
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    kept = store.write("k", list("abcd"), [rows[:2], rows[2:]])
    np.testing.assert_array_equal(
        store.assemble("k", list("dcba"), _where(kept, "abcd")), rows[::-1]
    )
    assert store.put("k", ["e"], np.ones((1, 3), np.float32)) == 0  # no second try, no warning
    (warning,) = warnings_logged
    assert str(tmp_path / "cache") in warning.getMessage()
    assert os.strerror(code) in warning.getMessage()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing left


def test_rows_written_before_the_disk_filled_up_are_kept(tmp_path, monkeypatch, warnings_logged):
    _fail_writes(monkeypatch, errno.ENOSPC, after=2)  # the header and the first batch
    store = FeatureStore(tmp_path)
    rows = np.arange(18, dtype=np.float32).reshape(6, 3)
    kept = store.write("k", list("abcdef"), [rows[:2], rows[2:4], rows[4:]])
    np.testing.assert_array_equal(store.assemble("k", list("abcdef"), _where(kept, "abcdef")), rows)
    assert len(warnings_logged) == 1


def test_a_big_assembled_array_that_does_not_fit_on_disk_is_built_in_memory(
    tmp_path, monkeypatch, warnings_logged
):
    store = FeatureStore(tmp_path)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.put("k", list("abcd"), rows)
    monkeypatch.setattr(store_module, "IN_MEMORY_LIMIT", 8)  # assemble through a scratch file

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module, "_reserve", full)
    found = store.lookup("k", list("dcba"))
    np.testing.assert_array_equal(store.assemble("k", list("dcba"), found.where), rows[::-1])
    assert len(warnings_logged) == 1
    assert not list(tmp_path.rglob(".assembled*"))


def _where(kept, digests):
    return {d: (kept, i) for i, d in enumerate(digests)}


def _fit(cache_dir, data):
    torch.manual_seed(0)
    clf = TransferClassifier(
        TinyNet(), "feature-extract", cut="blocks.2", cache_dir=str(cache_dir), **FAST_FIT
    )
    return clf.fit(data)


def test_fit_with_a_full_disk_under_the_cache_goes_on_in_memory(
    tmp_path, data, monkeypatch, warnings_logged
):
    cached = _fit(tmp_path / "ok", data)
    _fail_writes(monkeypatch, errno.ENOSPC)
    full = _fit(tmp_path / "full", data)
    assert full.metrics_["val_accuracy"] == cached.metrics_["val_accuracy"]
    assert full.metrics_["feature_cache"]["extracted"] == 36  # 18 images, 18 mirrored
    (warning,) = [r for r in warnings_logged if "cache" in r.getMessage()]
    assert str(tmp_path / "full") in warning.getMessage()
    assert "No space left on device" in warning.getMessage()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_fit_with_a_read_only_cache_folder_goes_on_in_memory(tmp_path, data, warnings_logged):
    cached = _fit(tmp_path / "ok", data)
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = _fit(folder, data)
    finally:
        folder.chmod(0o755)
    assert result.metrics_["val_accuracy"] == cached.metrics_["val_accuracy"]
    (warning,) = [r for r in warnings_logged if "cache" in r.getMessage()]
    assert str(folder) in warning.getMessage() and "ermission denied" in warning.getMessage()
    assert not list(folder.iterdir())
