"""Project exceptions.

Why a hierarchy: the CLI must tell bad input (exit 2, one line) from a bug (exit 1),
and library users must be able to catch our errors without catching everything.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TransferkitError(Exception):
    """Base class of every error transferkit raises on purpose."""


class InputError(TransferkitError, ValueError):
    """The user gave something we cannot use: a bad spec, path, option or file.

    The message names the received value and, where there are any, the valid options.
    """


class MissingDependencyError(TransferkitError, ImportError):
    """An optional extra (or a system package) is needed for what was asked."""


class WeightsUnavailableError(TransferkitError):
    """Pretrained weights could not be had (offline, or a bad local file)."""


def close_matches(name: str, options: Iterable[str], n: int = 5) -> list[str]:
    """Return the options closest to ``name``, for 'did you mean' messages."""
    options = list(options)
    lowered = {o.lower(): o for o in options}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    if len(hits) < n:
        hits += [o.lower() for o in options if name.lower() in o.lower() and o.lower() not in hits]
    return [lowered[h] for h in hits[:n]]


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """Format a short 'did you mean: a, b' suffix, or an empty string."""
    hits = close_matches(name, options)
    return f"; did you mean: {', '.join(hits)}?" if hits else ""
