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


def test_readme_blip2_example_runs(tmp_path, monkeypatch, capsys):
    """A tiny BLIP-2 with its processor (a small BPE tokenizer whose <image> id the config names)."""
    import transformers

    from tests.bpe import save_bpe_tokenizer
    from tests.parity.test_blip2 import QUERIES, reference_blip2

    example = next(e for e in EXAMPLES if "Blip2ForConditionalGeneration" in e)
    model_dir = tmp_path / "model"
    tokenizer = transformers.AutoTokenizer.from_pretrained(save_bpe_tokenizer(tmp_path / "tokenizer"))
    image_processor = transformers.BlipImageProcessorPil(size={"height": 28, "width": 28})
    processor = transformers.Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=QUERIES
    )
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    reference_blip2(model_dir, image_token=image_token, vocab_size=image_token + 1)
    processor.save_pretrained(model_dir)
    shutil.copy(IMAGES[0], tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(example.replace("Salesforce/blip2-opt-2.7b", str(model_dir)), "README", "exec"), {})
    assert "Question: how many dogs are there? Answer:" in capsys.readouterr().out
