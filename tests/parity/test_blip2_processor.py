"""Blip2Processor against the reference's: image tokens before the (padded) text; GPT-2 BPE (OPT) and
SentencePiece unigram (T5) tokenizers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import blipkit
from tests.bpe import save_bpe_tokenizer
from tests.conftest import IMAGES
from tests.unigram import save_unigram_tokenizer

TEXTS = ["Question: what is in the picture? Answer:", "a photograph of", "unseen wörds → ok"]


def reference_processor(directory, padding_side):
    import transformers

    if padding_side == "t5":  # T5's tokenizer pads on the right and ends every text with </s>
        save_unigram_tokenizer(directory)
    else:
        save_bpe_tokenizer(directory, padding_side)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    image_processor = transformers.BlipImageProcessorPil(size={"height": 28, "width": 28})
    return transformers.Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4)


@pytest.mark.parametrize("padding_side", ["left", "right", "t5"])
@pytest.mark.parametrize("with_images", [True, False])
def test_processor_matches_reference(tmp_path, padding_side, with_images):
    reference = reference_processor(tmp_path / "ref", padding_side)
    reference.save_pretrained(tmp_path / "saved")
    ours = blipkit.Blip2Processor.from_pretrained(tmp_path / "saved")
    assert ours.num_query_tokens == 4 and ours.tokenizer.padding_side == padding_side.replace("t5", "right")
    images = [Image.open(p) for p in IMAGES[:3]] if with_images else None
    expected = reference(images=images, text=TEXTS, padding=True, return_tensors="pt")
    actual = ours(images=images, text=TEXTS, padding=True, return_tensors="pt")
    assert set(actual) == set(expected) - {"token_type_ids"}
    for key in actual:
        torch.testing.assert_close(actual[key], expected[key], atol=0, rtol=0)
    assert ours.batch_decode(actual["input_ids"], skip_special_tokens=True) == reference.batch_decode(
        expected["input_ids"], skip_special_tokens=True
    )


@pytest.mark.parametrize("kind", ["right", "t5"])
def test_max_length_counts_the_image_tokens(tmp_path, kind):
    reference = reference_processor(tmp_path / "ref", kind)
    reference.save_pretrained(tmp_path / "saved")
    ours = blipkit.Blip2Processor.from_pretrained(tmp_path / "saved")
    kwargs = {"images": Image.open(IMAGES[0]), "text": TEXTS[0], "truncation": True, "max_length": 9}
    expected = reference(**kwargs, return_tensors="pt")["input_ids"]
    actual = ours(**kwargs, return_tensors="pt")["input_ids"]
    assert actual.tolist() == expected.tolist() and actual.shape[1] == 9
