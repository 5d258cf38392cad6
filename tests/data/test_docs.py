"""The Python example in docs/data.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

from data_builders import good_images

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_data_doc_example_runs(tmp_path, capsys):
    good_images(tmp_path / "imgs" / "cat", 5, seed=1)
    good_images(tmp_path / "imgs" / "dog", 5, seed=2)
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("junk")
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    code = code.replace(
        'DATA, SIZE = "my_images/", 224', f"DATA, SIZE = {str(tmp_path / 'imgs')!r}, 32"
    )
    scope: dict = {}
    exec(compile(code, "data.md", "exec"), scope)
    assert scope["images"].shape[1:] == (3, 32, 32)
    assert "dog/notes.txt not an image" in capsys.readouterr().out
