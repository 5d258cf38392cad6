"""How every command imports the library: with the collector paused, and (under the
``transferkit`` command) the imported objects frozen once they are in. Torch-free, so
``transferkit --help`` stays fast; shared by ``cli`` and the commands in their own
modules (``doctor.cli``)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

# set by ``cli.entry_point``: the next ``loading`` block freezes what it imported
_freeze_after_imports = {"pending": False}


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Import a handler's modules with the collector paused (see transferkit's
    ``_import_heavy``); under the ``transferkit`` command, freeze what they created
    once they are in (see ``cli.entry_point``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        if _freeze_after_imports["pending"]:
            _freeze_after_imports["pending"] = False
            gc.freeze()
