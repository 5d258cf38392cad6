"""Atomic file writes (temp file + rename) and file digests: a crash never leaves half
a file that looks whole, and a digest tells a damaged file from a good one — which
matters for run directories, caches and checkpoints.

Each write goes to a temporary file of its own (process id and a random part in the
name, so two processes writing the same path never write into one temporary file),
is flushed to disk (``fsync``) and then renamed over the target: after a crash or a
full disk the target holds the old bytes or the new ones, never a mix."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other writer will pick."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of :func:`temporary_name`'s files."""
    return name.startswith(".") and name.endswith(".tmp")


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it is synced and renamed over
    ``path``, on failure removed."""
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):
        fsync_file(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with _replacing(Path(path)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes the file's content to ``tmp``; it then replaces ``path``."""
    with _replacing(Path(path)) as tmp:
        write(tmp)


def save_tensors(path: str | Path, tensors: dict, metadata=None) -> None:
    """safetensors, atomically; shared storage is copied so every tensor stands alone.

    (torch is imported here, not at the top, so that the torch-free parts of the
    package, such as the feature store, can use this module.)"""
    from safetensors.torch import save_file

    own = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write_with(path, lambda tmp: save_file(own, str(tmp), metadata=metadata))


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
