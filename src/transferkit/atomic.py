"""Atomic file writes (temp file + rename) and file digests: a crash never leaves half
a file that looks whole, and a digest tells a damaged file from a good one — which
matters for run directories, caches and checkpoints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(path: str | Path, tensors: dict, metadata=None) -> None:
    """safetensors, atomically; shared storage is copied so every tensor stands alone.

    (torch is imported here, not at the top, so that the torch-free parts of the
    package, such as the feature store, can use this module.)"""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(
        {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
        str(tmp),
        metadata=metadata,
    )
    os.replace(tmp, path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
