"""Where a fit's time went, from metrics.json, in numbers that add up as shown.

metrics.json holds each phase's ``seconds`` (its epochs, the validation before the
first one when the phase starts from earlier weights, and restoring the best weights
at its end) and ``seconds_total`` (the whole fit, from the call to the trained model
evaluated). The rest is work outside the phases: scanning the data, building the
backbone, measuring the data for the strategy, extracting the cached features and
evaluating the final model on the validation and test splits. Writing the run's
files and this report happen after ``seconds_total`` is taken and are not in it.

Every number is rounded once, to the same unit, and the rest is the shown total
minus the shown phases, so the column adds up exactly as printed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .history import as_float

OTHER_WORK = (
    "everything else: data scan, backbone loading, strategy measurement, feature "
    "extraction and the final evaluation"
)
RESUMED = (
    "not known: the run was resumed, so its phases count their time before the "
    "interruption while the total counts only the last session"
)
TOTAL = "total fit time (saving the run and building this report come after it)"


@dataclass(frozen=True)
class TimeRow:
    """One line of the timings table: an anchor-safe ``key``, a label, the seconds
    rounded to ``decimals`` (None: not known)."""

    key: str
    label: str
    seconds: float | None
    decimals: int

    def text(self) -> str:
        """``"1.23 s"``; over a minute also in minutes, ``"75.0 s (1 min 15 s)"``."""
        if self.seconds is None:
            return "—"
        shown = f"{self.seconds:.{self.decimals}f} s"
        return shown + (f" ({human_duration(self.seconds)})" if self.seconds >= 60 else "")


def timing_rows(record: Mapping) -> list[TimeRow]:
    """The phases of ``record`` (metrics.json), the rest and the total, rounded alike."""
    phases = [p for p in record.get("phases") or [] if isinstance(p, Mapping)]
    total = as_float(record.get("seconds_total"))
    seconds = [as_float(p.get("seconds")) for p in phases]
    known = [s for s in (total, *seconds) if not math.isnan(s)]
    decimals = 2 if max(known, default=0.0) < 10 else 1
    rows = [
        TimeRow(f"phase-{slug(p.get('name'))}", phase_label(p), _round(s, decimals), decimals)
        for p, s in zip(phases, seconds, strict=True)
    ]
    if math.isnan(total):
        return rows
    shown_total = round(total, decimals)
    rest = round(shown_total - sum(r.seconds or 0.0 for r in rows), decimals)
    if rest < 0:
        rows.append(TimeRow("other", f"everything else: {RESUMED}", None, decimals))
    else:
        rows.append(TimeRow("other", OTHER_WORK, rest, decimals))
    rows.append(TimeRow("total", TOTAL, shown_total, decimals))
    return rows


def phase_label(phase: Mapping) -> str:
    """``"fine-tune phase (3 epochs, stopped: early stopping)"``."""
    label = f"{phase.get('name', 'phase')} phase"
    epochs, stopped = phase.get("epochs_run"), phase.get("stopped")
    if epochs is not None:
        label += f" ({epochs} epoch{'s' if epochs != 1 else ''}"
        label += f", stopped: {stopped})" if stopped else ")"
    return label


def human_duration(seconds: float) -> str:
    """``"1 min 15 s"``, ``"2 h 5 min"``; under a minute ``"12.3 s"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _round(seconds: float, decimals: int) -> float | None:
    return None if math.isnan(seconds) else round(seconds, decimals)


def slug(name: object) -> str:
    """A phase name as an id fragment: ``"fine-tune"`` stays, odd characters become -."""
    return re.sub(r"[^a-z0-9_-]+", "-", str(name or "phase").lower()).strip("-") or "phase"
