"""Shared by the bench scripts (run as `python bench/NAME.py`, so this is importable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def git_state() -> str | None:
    """The commit measured, with "+dirty" when tracked files differ from it."""

    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, check=False).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src").strip()
    return (head + ("+dirty" if dirty else "")) or None


def command_line(script: str, argv=None) -> str:
    """How the benchmark was started, for its JSON: interpreter, script, arguments."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join([os.path.relpath(sys.executable), script, *args])


def emit(result: dict, out: str | None) -> None:
    """Print a benchmark's JSON, and also write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
