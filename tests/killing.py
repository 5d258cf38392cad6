"""A fit in a child process that dies by SIGKILL at a chosen moment.

The children come from a fork server that imported torch and transferkit once, so
each costs a fork, not a three-second import. A moment is a file rename: every
atomic write (checkpoints, the run's files, the caches) ends with one, so "before
rename 7" is inside a write (the temporary file complete, the target not replaced)
and "after rename 7" between two writes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

CONFIG = {
    "strategy": "fine-tune",
    "image_size": 16,
    "lr": 1e-2,
    "fine_tune_lr": 1e-3,
    "patience": 3,
    "fine_tune_epochs": 3,
    "head_epochs": 8,
    "batch_size": 6,
    "workers": 0,
    "cut": "blocks.2",
}


def _die_at_rename(event: int) -> None:
    """SIGKILL this process at the ``event``-th moment: 2k is just before the k-th
    ``os.replace``, 2k+1 just after it."""
    real, count = os.replace, [0]

    def replace(src, dst, **kw):
        if count[0] == event:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, **kw)
        if count[0] + 1 == event:
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 2

    os.replace = replace


def run_fit(data: str, run: str, cache: str, *, resume: bool = False, event: int | None = None):
    """Fit (or resume) the fixed tiny fine-tune into ``run``; die at ``event``."""
    import logging

    import torch

    from helpers import TinyNet
    from transferkit.config import FitConfig
    from transferkit.fitting import fit
    from transferkit.runs import Run

    torch.set_num_threads(1)
    logging.getLogger("transferkit").setLevel(logging.ERROR)
    Run.write_report = lambda self: self.path  # plots: seconds, and not what is tested
    if event is not None:
        _die_at_rename(event)
    torch.manual_seed(0)
    config = FitConfig(**CONFIG, cache_dir=cache)
    fit(data, config, module=TinyNet(), run_dir=run, resume=resume)


def count_renames(data: str, run: str, cache: str) -> int:
    """How many renames a whole fit makes (run in the calling process)."""
    real, count = os.replace, [0]

    def replace(src, dst, **kw):
        count[0] += 1
        real(src, dst, **kw)

    os.replace = replace
    try:
        run_fit(data, run, cache)
    finally:
        os.replace = real
    return count[0]


def weights(run: str | Path) -> dict:
    from helpers import TinyNet
    from transferkit.runs import load_run

    return load_run(run, backbone=TinyNet()).model.state_dict()


def child(*args, **kwargs) -> None:
    """:func:`run_fit` as a child process's whole life: no interpreter shutdown after
    it (torch's teardown would cost more than the fit)."""
    run_fit(*args, **kwargs)
    os._exit(0)
