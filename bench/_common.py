"""Shared by the bench scripts (run as `python bench/NAME.py`, so this is importable)."""

from __future__ import annotations

import subprocess


def git_state() -> str | None:
    """The commit measured, with "+dirty" when tracked files differ from it."""

    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, check=False).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src").strip()
    return (head + ("+dirty" if dirty else "")) or None
