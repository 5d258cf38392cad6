"""The first seconds: ``import transferkit``, ``transferkit --help``, ``--version`` and a
mistyped command answer without importing torch (nor timm, matplotlib, numpy), so they
come back at once; the public names still import as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "timm", "torchvision", "matplotlib", "numpy", "rich")

# Runs the command line in-process, then reports which heavy modules got imported.
PROBE = """
import json, sys
from transferkit.cli import entry_point
code = None
try:
    entry_point()
except SystemExit as done:
    code = done.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
sys.__stderr__.write("\\nPROBE " + json.dumps({{"code": code, "heavy": heavy}}) + "\\n")
"""


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }


def _command(*argv: str) -> tuple[int, list[str], str]:
    """Exit code, heavy modules imported, and stdout+stderr of ``transferkit ARGV``."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE "))
    report = json.loads(line.removeprefix("PROBE "))
    return report["code"], report["heavy"], proc.stdout + proc.stderr


def test_import_transferkit_imports_no_torch():
    code = (
        "import sys, transferkit; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), transferkit.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    ).stdout
    assert out.startswith("[] ")


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("--version",),
        ("fit", "--help"),
        ("export", "--help"),
        ("fit", "data", "--out", "run", "--learning-rate", "0.1"),  # misspelt option
        ("fitt", "data"),  # misspelt command
        ("fit", "data"),  # missing --out
        ("fit", "data", "--out", "run", "--epochs", "5"),  # ambiguous
        ("fit", "data", "--out", "run", "--strategy", "fine_tune"),  # bad choice
    ],
)
def test_help_version_and_usage_errors_import_no_torch(argv):
    code, heavy, output = _command(*argv)
    assert heavy == [], output
    assert code == (0 if "--help" in argv or "--version" in argv else 2), output
    assert "Traceback" not in output


def test_the_public_names_still_import_and_are_listed():
    import transferkit

    names = set(transferkit.__all__)
    assert names == {*transferkit._PUBLIC, "__version__"}
    assert names <= set(dir(transferkit))
    from transferkit import TransferClassifier, summary, train
    from transferkit.estimator import TransferClassifier as Direct
    from transferkit.train import train as train_function

    assert TransferClassifier is Direct and callable(summary)
    assert train is train_function  # the function, although a submodule has its name
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        transferkit.nothing_here  # noqa: B018


def test_the_command_freezes_the_collector_only_after_a_handlers_imports(monkeypatch, capsys):
    """--version answers before anything is frozen; a command freezes once it has
    imported what it needs (the objects of torch and timm), before its work."""
    import gc

    from transferkit import cli

    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append("freeze"))
    monkeypatch.setitem(cli._freeze_after_imports, "pending", False)  # restored after
    with pytest.raises(SystemExit):
        monkeypatch.setattr(sys, "argv", ["transferkit", "--version"])
        cli.entry_point()
    assert frozen == []

    def handler_work(args):
        frozen.append("work")
        return 0

    def handler(args):
        with cli._loading():
            import torch  # noqa: F401
        return handler_work(args)

    monkeypatch.setattr(cli, "_run_report", handler)
    monkeypatch.setattr(sys, "argv", ["transferkit", "report", "somewhere"])
    with pytest.raises(SystemExit) as done:
        cli.entry_point()
    assert done.value.code == 0 and frozen == ["freeze", "work"]
    capsys.readouterr()
