"""The doctor's JSON on the planted data, once per session."""

from __future__ import annotations

import json
import os
import sys

import pytest

# the suite imports test modules with importlib (no sys.path changes): the shared
# builders of this folder are importable by name this way
sys.path.insert(0, os.path.dirname(__file__))
from doctor_data import TINY, plant

from transferkit.cli import main


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    return plant(tmp_path_factory.mktemp("planted") / "data")


@pytest.fixture(scope="session")
def findings(planted, tmp_path_factory) -> dict:
    """``transferkit doctor --json`` on the planted data (read only)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["doctor", str(planted), *TINY, "--json"]) == 0
    return json.loads(out.getvalue())
