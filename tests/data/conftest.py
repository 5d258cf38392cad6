"""Data-layer fixtures: a private cache per test, and the junk folder."""

from __future__ import annotations

import os
import sys

import pytest

from transferkit.data import scanning

# The suite imports test modules with importlib (no sys.path changes); the tests here
# share the image writers in data_builders.py, next to this file.
sys.path.insert(0, os.path.dirname(__file__))
from data_builders import build_junk_folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache from tests."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def simulate_permissions(monkeypatch):
    """chmod 000 does not stop root; make reads of mode-000 files fail as they would."""
    real = scanning._read_file

    def read(path):
        if os.geteuid() == 0 and os.stat(path).st_mode & 0o777 == 0:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(scanning, "_read_file", read)


@pytest.fixture
def junk(tmp_path, simulate_permissions):
    """(root, expected) for a folder holding every bad-input kind next to good images."""
    root = tmp_path / "junk"
    expected = build_junk_folder(root)
    yield root, expected
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o644)
