"""The documented examples run (docs/custom_loop.md)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from helpers import make_image_folder

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def test_custom_loop_runs_and_keeps_the_frozen_part_frozen(tmp_path):
    data = make_image_folder(tmp_path / "imgs", per_class=5, size=16)
    (code,) = _python_blocks("custom_loop.md")
    code = code.replace('DATA, SIZE = "my_images/", 96', f"DATA, SIZE = {str(data)!r}, 32")
    scope: dict = {}
    exec(compile(code, "custom_loop.md", "exec"), scope)
    base, model = scope["base"], scope["model"]
    blocks = base.blocks
    # only the top block (and the head) are trainable after the fine-tune step
    assert all(p.requires_grad for p in blocks[-1][1].parameters())
    assert not any(p.requires_grad for _, g in blocks[:-1] for p in g.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert torch.isfinite(torch.tensor(scope["last_loss"]))
