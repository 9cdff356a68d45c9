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
    """Tiny BLIP-2s with their processors: Flan-T5 (a unigram tokenizer), OPT (a BPE tokenizer) and an ITM model."""
    import torch
    import transformers

    from tests.bpe import save_bpe_tokenizer
    from tests.parity.test_blip2 import QUERIES, reference_blip2
    from tests.parity.test_blip2_parts import QFORMER, VISION
    from tests.parity.test_t5 import FLAN, TINY_T5
    from tests.reference import perturb_
    from tests.unigram import save_unigram_tokenizer

    def processor(tokenizer_dir, num_query_tokens):
        image_processor = transformers.BlipImageProcessorPil(size={"height": 28, "width": 28})
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
        return transformers.Blip2Processor(image_processor, tokenizer, num_query_tokens=num_query_tokens)

    def save(class_name, directory, processor, **config):
        config = transformers.Blip2Config(vision_config=VISION, num_query_tokens=QUERIES, **config)
        torch.manual_seed(0)
        perturb_(getattr(transformers, class_name)(config)).save_pretrained(directory)
        processor.save_pretrained(directory)

    t5 = processor(save_unigram_tokenizer(tmp_path / "unigram"), QUERIES)
    image_token = t5.tokenizer.convert_tokens_to_ids("<image>")
    t5_text = {**TINY_T5, **FLAN, "vocab_size": image_token + 1}
    save("Blip2ForConditionalGeneration", tmp_path / "t5", t5, qformer_config=QFORMER, text_config=t5_text,
         image_token_index=image_token)  # fmt: skip
    opt = processor(save_bpe_tokenizer(tmp_path / "bpe"), QUERIES)
    image_token = opt.tokenizer.convert_tokens_to_ids("<image>")
    reference_blip2(tmp_path / "opt", image_token=image_token, vocab_size=image_token + 1)
    itm = processor(tmp_path / "bpe", None)
    save(
        "Blip2ForImageTextRetrieval",
        tmp_path / "itm",
        itm,
        qformer_config={**QFORMER, "vocab_size": 400, "use_qformer_text_input": True},
    )

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
