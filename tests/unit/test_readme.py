"""The README's Python example runs as written (on a tiny local checkpoint instead of the Hub model)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.conftest import IMAGES
from tests.reference import save_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    example = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    save_reference("BlipForImageTextRetrieval", tmp_path / "model")
    shutil.copy(IMAGES[0], tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(example.replace("Salesforce/blip-itm-base-coco", str(tmp_path / "model")), "README", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.count("tensor(") == 2 and "bfloat16" in printed
