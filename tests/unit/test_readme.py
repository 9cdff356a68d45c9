"""The README's Python examples run as written (on tiny local checkpoints instead of the Hub models)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import IMAGES
from tests.reference import save_reference

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize(
    "marker, class_name, repo",
    [
        ("BlipForImageTextRetrieval", "BlipForImageTextRetrieval", "Salesforce/blip-itm-base-coco"),
        ("BlipForConditionalGeneration", "BlipForConditionalGeneration", "Salesforce/blip-image-captioning-base"),
    ],
)
def test_readme_example_runs(tmp_path, monkeypatch, capsys, marker, class_name, repo):
    example = next(e for e in EXAMPLES if f"import BlipProcessor, {marker}" in e)
    save_reference(class_name, tmp_path / "model")
    shutil.copy(IMAGES[0], tmp_path / "photo.jpg")
    shutil.copy(IMAGES[1], tmp_path / "other.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(example.replace(repo, str(tmp_path / "model")), "README", "exec"), {})
    assert capsys.readouterr().out.strip()
