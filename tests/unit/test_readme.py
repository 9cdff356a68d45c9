"""The README's Python examples run as written (on tiny local checkpoints instead of the Hub models)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.builders.checkpoints import save_tiny_blip2s
from tests.builders.configs import QFORMER, QUERIES, TINY_T5
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


def test_readme_blip2_example_runs(tmp_path, monkeypatch, capsys):
    """Tiny BLIP-2s with their processors: Flan-T5 (a unigram tokenizer), OPT (a BPE tokenizer) and an ITM model."""
    save_tiny_blip2s(tmp_path)
    example = next(e for e in EXAMPLES if "Blip2ForConditionalGeneration" in e)
    for repo, local in (("blip2-flan-t5-xl", "t5"), ("blip2-opt-2.7b", "opt"), ("blip2-itm-vit-g", "itm")):
        example = example.replace(f"Salesforce/{repo}", str(tmp_path / local))
    shutil.copy(IMAGES[0], tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(example, "README", "exec"), names)
    assert capsys.readouterr().out.strip().startswith("['")  # the decoded answer
    assert names["features"].shape == (1, QUERIES, TINY_T5["d_model"])
    assert names["queries"].shape == (1, QUERIES, QFORMER["hidden_size"])
    assert 0 <= float(names["match"].detach()) <= 1 and names["similarity"].shape == (1, 1)
