"""Bad input gets an error that names the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import blipkit
from blipkit import BlipImageProcessor, BlipTokenizer, ImageError
from tests.builders.inputs import sample_inputs
from tests.conftest import IMAGES, VOCAB
from tests.reference import save_reference


@pytest.fixture(scope="module")
def processor():
    return BlipImageProcessor(size=32)


def test_missing_file(processor, tmp_path):
    with pytest.raises(ImageError, match=f"image file not found: {tmp_path}/nope.jpg"):
        processor(str(tmp_path / "nope.jpg"))


def test_not_an_image(processor, tmp_path):
    (tmp_path / "notes.jpg").write_text("just text")
    with pytest.raises(ImageError, match="notes.jpg: not an image file"):
        processor(tmp_path / "notes.jpg")


def test_truncated_jpeg(processor, tmp_path):
    data = next(p for p in IMAGES if p.suffix == ".jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cut.jpg: the file is truncated or corrupt"):
        processor(tmp_path / "cut.jpg")


def test_corrupt_bytes(processor):
    with pytest.raises(ImageError, match="cannot read image <bytes>: the file is truncated or corrupt"):
        processor(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="cannot read image <bytes>: not an image file"):
        processor(b"garbage")


@pytest.mark.parametrize("mode", ["F", "LAB", "HSV"])
def test_unsupported_mode(processor, mode):
    with pytest.raises(ImageError, match=f"unsupported image mode '{mode}'"):
        processor(Image.new(mode, (8, 8)))


def test_zero_size_image(processor):
    with pytest.raises(ImageError, match=r"image has zero size \(0x5\)"):
        processor(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match="zero size"):
        processor(np.zeros((0, 4, 3), dtype=np.uint8))


def test_empty_and_odd_inputs(processor):
    with pytest.raises(ImageError, match="images is an empty list"):
        processor([])
    with pytest.raises(ImageError, match="cannot read an image from int"):
        processor(42)
    with pytest.raises(ImageError, match="cannot find the channel axis"):
        processor(np.zeros((8, 8, 7), dtype=np.uint8))
    with pytest.raises(ImageError, match=r"float image values must lie in \[0, 1\]"):
        processor(np.full((8, 8, 3), 3.5, dtype=np.float32))


def test_tokenizer_rejects_empty_and_non_string_text():
    tokenizer = BlipTokenizer.from_vocab(VOCAB)
    with pytest.raises(ValueError, match="text is an empty list"):
        tokenizer([])
    with pytest.raises(TypeError, match=r"text must be strings; item 1 is 3 \(int\)"):
        tokenizer(["ok", 3])
    with pytest.raises(ValueError, match="pass padding=True"):
        tokenizer(["a", "a much longer text"], return_tensors="pt")


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("caption")
    save_reference("BlipForConditionalGeneration", directory)
    return blipkit.BlipForConditionalGeneration.from_pretrained(directory)


def test_text_longer_than_positions(caption_model):
    inputs = sample_inputs()
    long_ids = torch.full((2, 41), 1037)
    with pytest.raises(
        ValueError, match=r"text of 41 tokens is longer than the model's max_position_embeddings \(40\)"
    ):
        caption_model(pixel_values=inputs["pixel_values"], input_ids=long_ids)


def test_wrong_tensor_shapes(caption_model):
    inputs = sample_inputs()
    with pytest.raises(
        ValueError, match=r"pixel_values must have shape \(batch, 3, height, width\), got \(3, 32, 32\)"
    ):
        caption_model(pixel_values=inputs["pixel_values"][0], input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, tokens\), got \(5,\)"):
        caption_model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"][0])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 5\), got \(2, 4\)"):
        caption_model(**dict(inputs, attention_mask=inputs["attention_mask"][:, :4]))
    with pytest.raises(ValueError, match=r"input_ids hold ids outside the vocabulary \[0, 30524\)"):
        caption_model(pixel_values=inputs["pixel_values"], input_ids=torch.tensor([[101, 40000]]))
    with pytest.raises(ValueError, match="give 36 patches but the model has positions for 16"):
        caption_model(pixel_values=torch.zeros(1, 3, 48, 48), input_ids=inputs["input_ids"][:1])
    with pytest.raises(ValueError, match="input_ids is empty"):
        caption_model(pixel_values=inputs["pixel_values"], input_ids=torch.zeros(2, 0, dtype=torch.long))


def test_vqa_width_mismatch_is_refused():
    with pytest.raises(ValueError, match="needs vision_config.hidden_size == text_config.hidden_size, got 48 and 32"):
        blipkit.BlipForQuestionAnswering(
            blipkit.BlipConfig(
                text_config={"hidden_size": 32, "num_attention_heads": 4}, vision_config={"hidden_size": 48}
            )
        )


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="hidden size 30 is not a multiple of the number of attention heads 4"):
        blipkit.BlipVisionModel(blipkit.BlipVisionConfig(hidden_size=30, num_attention_heads=4, num_hidden_layers=1))
