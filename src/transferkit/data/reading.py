"""Threads that read a batch's items in the main process.

Decoding and resizing release the GIL, so with no loader processes (the default on
a CPU, and on a GPU when the data fit in one batch) a batch is read on every core
instead of one. Shared by the CPU loader (``loaders.ImageDataset``) and the GPU path
(``gpu.EncodedDataset``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_POOL: ThreadPoolExecutor | None = None


def reading_threads() -> int:
    """How many reading threads there are: one per core up to 4, at least 2."""
    return max(2, min(4, os.cpu_count() or 1))


def reading_pool() -> ThreadPoolExecutor:
    """The process's reading threads (``reading_threads`` of them)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(reading_threads(), thread_name_prefix="transferkit-read")
    return _POOL
