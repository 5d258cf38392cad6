"""Progress for long work: a rich bar (rate, ETA, live metrics) on a terminal, plain
log lines otherwise, so CI logs and files stay readable."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("transferkit")
_silenced = contextvars.ContextVar("transferkit_progress_silenced", default=False)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No progress at all (bars or lines) inside this block: the other processes of
    a torchrun job use it, so one account of the run is printed, not one per process."""
    token = _silenced.set(True)
    try:
        yield
    finally:
        _silenced.reset(token)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so a live progress bar (which
    redirects stderr while it draws) prints the line above itself instead of through it."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def console_logging(quiet: bool = False) -> logging.Handler | None:
    """Log lines of the ``transferkit`` logger to stderr (progress, phases, warnings);
    ``quiet`` keeps only warnings, so ``--json`` output stays clean to pipe. Returns
    the handler added, or None when one of ours was there already."""
    if any(getattr(h, "_transferkit_console", False) for h in log.handlers):
        return None
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler._transferkit_console = True
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


@contextlib.contextmanager
def reporting(verbose: bool = True) -> Iterator[None]:
    """What a library call such as ``TransferClassifier.fit`` shows while it runs.

    ``verbose``: the log lines and progress on stderr, as the command line shows them,
    unless the program configured logging itself (then its handlers get the lines).
    The logger is left as it was found afterwards. ``verbose=False``: no progress bars
    or lines and no console lines (a run's train.log still gets everything)."""
    if not verbose:
        with silenced():
            yield
        return
    if log.hasHandlers():
        yield
        return
    level, propagate = log.level, log.propagate
    handler = console_logging()
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def interactive() -> bool:
    if os.environ.get("TRANSFERKIT_PROGRESS") == "0":
        return False
    return sys.stderr.isatty() or os.environ.get("TRANSFERKIT_PROGRESS") == "1"


def progress_iter(
    items: Iterable[T],
    *,
    total: int | None = None,
    description: str = "",
    unit: str = "it",
    status=None,
) -> Iterator[T]:
    """Iterate with a progress bar; ``status()`` may return a short live string
    (e.g. current loss/accuracy) shown beside the bar."""
    if _silenced.get():
        yield from items
        return
    if not interactive():
        yield from _plain(items, total, description, unit)
        return
    from rich.progress import Progress

    start = time.perf_counter()
    with Progress(*_bar_columns(), transient=False) as bar:
        task = bar.add_task(description, total=total, rate="", status="")
        for i, item in enumerate(items, 1):
            yield item
            rate = i / max(time.perf_counter() - start, 1e-9)
            bar.update(
                task, advance=1, rate=f"{rate:.1f} {unit}/s", status=status() if status else ""
            )


def _bar_columns() -> list:
    """What the bar shows: description, bar, done/total, rate, elapsed, ETA, status."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]


def _plain(items, total, description, unit):
    start = time.perf_counter()
    step = max(1, (total or 10) // 5)
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        if total and (i % step == 0 or i == total):
            elapsed = time.perf_counter() - start
            eta = elapsed / i * (total - i)
            log.info(
                "%s: %d/%d %s (%.1f %s/s, ETA %.0fs)",
                description,
                i,
                total,
                unit,
                i / max(elapsed, 1e-9),
                unit,
                eta,
            )


def duration(seconds: float) -> str:
    """A time span as people say it: ``45s``, ``6 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Tracker:
    """One progress display over work handed in step by step (every batch of a phase,
    across its epochs), so rate and ETA are the whole work's, not one epoch's: a rich
    bar on a terminal, otherwise a log line every tenth of the way.

    ``clock`` is the time source (tests pass a fake one)."""

    def __init__(self, total: int, description: str, *, unit: str = "it", clock=time.perf_counter):
        self.total, self.description, self.unit, self.clock = total, description, unit, clock
        self.done = 0
        self.start = clock()
        self._quiet = _silenced.get()
        self._next_line = max(1, total // 10)
        self._bar = None
        if not self._quiet and interactive():
            from rich.progress import Progress

            self._bar = Progress(*_bar_columns(), transient=False, get_time=clock)
            self._task = self._bar.add_task(description, total=total, rate="", status="")
            self._bar.start()

    def advance(self, status: str = "", description: str | None = None) -> None:
        self.done += 1
        self.description = description or self.description
        if self._quiet:
            return
        rate = self.done / max(self.clock() - self.start, 1e-9)
        if self._bar is not None:
            self._bar.update(
                self._task,
                advance=1,
                description=self.description,
                rate=f"{rate:.1f} {self.unit}/s",
                status=status,
            )
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 10)
            log.info(
                "%s: %d/%d %s (%.1f %s/s, ETA %s)",
                self.description,
                self.done,
                self.total,
                self.unit,
                rate,
                self.unit,
                duration(max(self.total - self.done, 0) / rate),
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class Estimate:
    """The total time of ``total`` steps, from the first ones: the first step is left
    out of the rate (loader workers starting, compilation, caches warming), the next
    ``sample`` are timed. :meth:`step` returns the estimate once, when it is ready."""

    def __init__(self, total: int, sample: int = 5, clock=time.perf_counter):
        self.total, self.clock = total, clock
        self.sample = max(0, min(sample, total - 1))
        self.start = clock()
        self.steps = 0
        self._first_done = 0.0

    def step(self) -> float | None:
        self.steps += 1
        now = self.clock()
        if self.steps == 1:
            self._first_done = now
        if self.sample and self.steps == 1 + self.sample:
            per_step = (now - self._first_done) / self.sample
            return now - self.start + per_step * (self.total - self.steps)
        return None
