"""Who may write a run folder, and what a new fit may do with what is already there.

One fit at a time: a fit holds an exclusive lock (``flock``) on ``RUN/.lock`` for as
long as it runs, and a second fit into the same folder is refused at once instead of
mixing its files with the first's. The kernel drops the lock when the process dies,
so a killed fit never leaves a stale lock behind.

What is there decides what a fit may do, and nothing is reused silently:

============  =====================  ==========================  =====================
folder        ``fit``                ``fit --resume``            ``fit --overwrite``
============  =====================  ==========================  =====================
new, empty    trains                 refused: nothing to resume  trains
interrupted   refused (say which)    continues it                starts over
finished      refused (say which)    refused: nothing to resume  replaces it
other files   refused                refused                     refused
============  =====================  ==========================  =====================

A refused command leaves the folder as it found it (one it created, it removes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import is_temporary
from .errors import InputError
from .run_files import (
    CHECKPOINT_DIR,
    CONFIG,
    DATA_REPORT,
    DOCTOR,
    FIT_CONFIG,
    HISTORY,
    LOG,
    METRICS,
    PREDICTIONS,
    TRUST,
    TRUST_STATS,
    WEIGHTS,
)

LOCK = ".lock"
# what a fit writes into its folder; the report's own names are kept in step with
# the report builder's by a test (importing it here would pull in matplotlib)
REPORT_FILES = ("report.html", "plots")
RUN_FILES = (
    *(CONFIG, WEIGHTS, METRICS, HISTORY, DATA_REPORT, LOG, PREDICTIONS),
    *(TRUST, TRUST_STATS, DOCTOR, *REPORT_FILES),
)

NEW, INTERRUPTED, FINISHED, OTHER = "new", "interrupted", "finished", "other"


def folder_state(path: Path) -> str:
    """``new`` (absent or empty), ``interrupted`` (a fit's checkpoint and no finished
    run), ``finished`` (a saved run) or ``other`` (files that are not a run's)."""
    if not path.exists():
        return NEW
    if not path.is_dir():
        return OTHER
    if (path / CONFIG).is_file():
        return FINISHED
    if (path / CHECKPOINT_DIR / FIT_CONFIG).is_file():
        return INTERRUPTED
    entries = [e for e in path.iterdir() if e.name != LOCK and not is_temporary(e.name)]
    return NEW if not entries else OTHER


def describe(path: Path, state: str) -> str:
    """A few words on what the folder holds, for the messages that refuse a fit."""
    if state == FINISHED:
        try:
            metrics = json.loads((path / METRICS).read_text())
            acc = metrics.get("val_accuracy")
            detail = f", val accuracy {acc:.4f}" if isinstance(acc, float) else ""
            return f"a finished run ({metrics.get('strategy', '?')}{detail})"
        except (OSError, ValueError, AttributeError):
            return "a finished run"
    if state == INTERRUPTED:
        return "an interrupted fit"
    names = sorted(e.name for e in path.iterdir() if e.name != LOCK)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"files that are not a transferkit run ({shown})"


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``folder/.lock``."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise InputError(
                    f"--out {str(self.path.parent)!r} is in use by another fit{holder}; "
                    "wait for it to finish or choose another --out"
                ) from None
            if _same_file(fd, self.path):  # not unlinked by a holder releasing meanwhile
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: a waiter re-checks the inode
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (process {pid})"
    return ""


@dataclass
class Claim:
    """A fit's hold on its run folder: locked, checked, and cleaned up if refused."""

    path: Path
    resume: bool
    overwrite: bool
    created: bool = False
    state: str = NEW
    lock: FolderLock | None = None
    started: bool = False

    def __enter__(self) -> Claim:
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other: choose one")
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {str(self.path)!r} is a file, not a folder")
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = FolderLock(self.path)
        try:
            self.lock.acquire()
            self.state = folder_state(self.path)
            self._check()
        except BaseException:
            self._undo()
            raise
        return self

    def _check(self) -> None:
        where, state = str(self.path), self.state
        what = describe(self.path, state) if state != NEW else "nothing"
        if state == OTHER:
            raise InputError(
                f"--out {where!r} holds {what}: choose a new or empty folder for the run"
            )
        if self.resume and state != INTERRUPTED:
            extra = "; --overwrite trains it again" if state == FINISHED else ""
            raise InputError(f"nothing to resume in {where!r}: it holds {what}{extra}")
        if state == INTERRUPTED and not (self.resume or self.overwrite):
            raise InputError(
                f"--out {where!r} holds an interrupted fit: add --resume to continue it, "
                "or --overwrite to start over (from Python: resume=True, overwrite=True)"
            )
        if state == FINISHED and not self.overwrite:
            raise InputError(
                f"--out {where!r} holds {what}: add --overwrite (from Python: "
                "overwrite=True) to replace it, or choose another --out"
            )

    def begin(self) -> list[str]:
        """The fit is about to write: with ``--overwrite``, remove the previous run's
        files first (a fit's own names only; anything else in the folder is left
        alone). Returns the names removed."""
        self.started = True
        if not self.overwrite or self.state == NEW:
            return []
        removed = []
        for name in (*RUN_FILES, CHECKPOINT_DIR):
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
            else:
                continue
            removed.append(name)
        self.state = NEW
        return removed

    def __exit__(self, exc_type, exc, tb) -> None:
        refused = exc_type is not None and issubclass(exc_type, InputError)
        if refused and not self.resume:
            self._forget_attempt()
        self._undo()

    def _forget_attempt(self) -> None:
        """A fit refused before it trained anything leaves nothing of itself."""
        checkpoints = self.path / CHECKPOINT_DIR
        if not self.started or any(checkpoints.glob("*.safetensors")):
            return
        shutil.rmtree(checkpoints, ignore_errors=True)
        (self.path / LOG).unlink(missing_ok=True)

    def _undo(self) -> None:
        """Unlock; a folder this fit created and left empty is removed."""
        if self.lock is not None:
            self.lock.release()
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            with contextlib.suppress(OSError):
                self.path.rmdir()
