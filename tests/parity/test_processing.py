"""Image processing and tokenization identical to the reference's (PIL path, BertTokenizer)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from blipkit import BlipImageProcessor, BlipImageProcessorFast, BlipProcessor, BlipTokenizer
from tests.conftest import IMAGES, VOCAB
from tests.reference import reference_processor, reference_tokenizer


def reference_pixels(image, size=384, **kwargs):
    import transformers

    processor = transformers.BlipImageProcessorPil(size={"height": size, "width": size}, **kwargs)
    return processor(images=image, return_tensors="pt")["pixel_values"]


def photo(name: str) -> Image.Image:
    return Image.open(next(p for p in IMAGES if p.stem == name))


def _with_transparency(mode: str) -> Image.Image:
    base = photo("chelsea").resize((61, 47))
    if mode == "P+transparency":
        image = base.convert("P")
        image.info["transparency"] = 0
        return image
    if mode == "I;16":
        return Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 3)
    image = base.convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = Image.linear_gradient("L").resize(image.size)
        image.putalpha(alpha)
    return image


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "P+transparency", "CMYK", "1", "I;16", "YCbCr"])
def test_pixel_exact_for_every_mode(mode):
    image = _with_transparency(mode)
    expected = reference_pixels(image, size=64)
    actual = BlipImageProcessor(size={"height": 64, "width": 64})(image)["pixel_values"]
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_pixel_exact_on_real_photographs_default_size(path):
    image = Image.open(path)
    torch.testing.assert_close(BlipImageProcessor()(image)["pixel_values"], reference_pixels(image), atol=0, rtol=0)


@pytest.mark.parametrize("size", [(33, 17), (5, 129), (384, 384)])
def test_pixel_exact_for_odd_sizes_and_non_square_targets(size):
    image = photo("coffee").resize(size)
    processor = BlipImageProcessor(size={"height": 40, "width": 24})
    import transformers

    expected = transformers.BlipImageProcessorPil(size={"height": 40, "width": 24})(images=image, return_tensors="pt")
    torch.testing.assert_close(processor(image)["pixel_values"], expected["pixel_values"], atol=0, rtol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a,  # (H, W, 3) uint8
        lambda a: np.moveaxis(a, -1, 0),  # (3, H, W) uint8
        lambda a: a[..., :1],  # (H, W, 1) grayscale
        lambda a: torch.from_numpy(np.moveaxis(a, -1, 0).copy()),  # (3, H, W) tensor
        lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 128, np.uint8)], -1),  # RGBA array
        lambda a: a.astype(np.float32),  # integer-valued floats in [0, 255]
    ],
    ids=["hwc", "chw", "hw1", "tensor", "rgba", "float255"],
)
def test_pixel_exact_for_arrays_and_tensors(make):
    array = make(np.asarray(photo("astronaut").resize((50, 37))))
    expected = reference_pixels(array, size=32)
    torch.testing.assert_close(BlipImageProcessor(size=32)(array)["pixel_values"], expected, atol=0, rtol=0)


def test_two_dimensional_array_is_grayscale():
    gray = np.asarray(photo("astronaut").convert("L").resize((50, 37)))
    processor = BlipImageProcessor(size=32)
    torch.testing.assert_close(processor(gray)["pixel_values"], processor(gray[..., None])["pixel_values"])


def test_paths_bytes_and_pil_give_the_same_pixels():
    path = IMAGES[0]
    processor = BlipImageProcessor(size=48)
    from_pil = processor(Image.open(path))["pixel_values"]
    torch.testing.assert_close(processor(str(path))["pixel_values"], from_pil, atol=0, rtol=0)
    torch.testing.assert_close(processor(path)["pixel_values"], from_pil, atol=0, rtol=0)
    torch.testing.assert_close(processor(path.read_bytes())["pixel_values"], from_pil, atol=0, rtol=0)


def test_batch_of_mixed_inputs():
    images = [Image.open(IMAGES[0]), str(IMAGES[1]), np.asarray(Image.open(IMAGES[2]).convert("RGB"))]
    batch = BlipImageProcessor(size=32)(images)["pixel_values"]
    assert batch.shape == (3, 3, 32, 32)
    torch.testing.assert_close(batch[1:2], BlipImageProcessor(size=32)(IMAGES[1])["pixel_values"])


def test_fast_processor_is_within_documented_tolerance():
    images = [Image.open(p) for p in IMAGES]
    exact = BlipImageProcessor()(images)["pixel_values"]
    fast = BlipImageProcessorFast()(images)["pixel_values"]
    assert fast.shape == exact.shape
    difference = (fast - exact).abs()
    assert difference.max() < 0.035
    assert difference.mean() < 0.001


def test_preprocessor_config_round_trip(tmp_path):
    import transformers

    reference = transformers.BlipImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5, 0.5, 0.5])
    reference.save_pretrained(tmp_path)
    ours = BlipImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 224, "width": 224} and ours.image_mean == (0.5, 0.5, 0.5)
    ours.save_pretrained(tmp_path / "again")
    again = transformers.BlipImageProcessorPil.from_pretrained(tmp_path / "again")
    image = Image.open(IMAGES[0])
    torch.testing.assert_close(
        ours(image)["pixel_values"], again(images=image, return_tensors="pt")["pixel_values"], atol=0, rtol=0
    )


# ------------------------------------------------------------------------------------------------- tokenizer
TEXTS = [
    "A photo of a CAT, running!",
    "hello",
    "naïve café: déjà vu — ünïcödé 漢字 text",
    "   spaces\tand\nnewlines   ",
    "unbelievably antidisestablishmentarianism",
    "",
]


@pytest.fixture(scope="module")
def saved_processor(tmp_path_factory):
    directory = tmp_path_factory.mktemp("processor")
    reference_processor().save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"padding": True},
        {"padding": "max_length", "max_length": 20},
        {"padding": True, "truncation": True, "max_length": 6},
        {"truncation": True, "max_length": 3},
        {"add_special_tokens": False, "padding": "longest"},
    ],
    ids=str,
)
def test_tokenizer_matches_reference(saved_processor, options):
    ours = BlipTokenizer.from_pretrained(saved_processor)
    expected = reference_tokenizer()(TEXTS, **options)
    actual = ours(TEXTS, **options)
    assert actual["input_ids"] == expected["input_ids"]
    assert actual["attention_mask"] == expected["attention_mask"]


def test_tokenizer_from_vocab_txt_only(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(VOCAB.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": true, "model_max_length": 512}')
    ours = BlipTokenizer.from_pretrained(tmp_path)
    assert len(ours) == 30524
    assert ours.bos_token_id == 30522 and ours.enc_token_id == 30523
    expected = reference_tokenizer()(TEXTS, padding=True)
    assert ours(TEXTS, padding=True)["input_ids"] == expected["input_ids"]


@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_reference(saved_processor, skip):
    ours = BlipTokenizer.from_pretrained(saved_processor)
    ids = reference_tokenizer()(TEXTS, padding=True)["input_ids"]
    ids = [[30522, *row] for row in ids] + [[30523, 1037, 102, 0, 0]]
    assert ours.batch_decode(ids, skip_special_tokens=skip) == reference_tokenizer().batch_decode(
        ids, skip_special_tokens=skip
    )
    assert ours.decode(torch.tensor(ids[0]), skip_special_tokens=skip) == reference_tokenizer().decode(
        ids[0], skip_special_tokens=skip
    )


def test_processor_matches_reference_and_round_trips(saved_processor, tmp_path):
    ours = BlipProcessor.from_pretrained(saved_processor)
    images = [Image.open(p) for p in IMAGES[:2]]
    expected = reference_processor()(images=images, text=TEXTS[:2], padding=True, return_tensors="pt")
    actual = ours(images=images, text=TEXTS[:2], padding=True, return_tensors="pt")
    assert set(actual) == {"pixel_values", "input_ids", "attention_mask"}
    for key in actual:
        torch.testing.assert_close(actual[key], expected[key], atol=0, rtol=0)
    ours.save_pretrained(tmp_path)
    import transformers

    again = transformers.BlipProcessor.from_pretrained(tmp_path)
    assert again.tokenizer(TEXTS, padding=True)["input_ids"] == ours.tokenizer(TEXTS, padding=True)["input_ids"]
    assert BlipProcessor.from_pretrained(tmp_path).tokenizer(TEXTS)["input_ids"] == ours.tokenizer(TEXTS)["input_ids"]


def test_bytes_helper_reads_png_bytes():
    buffer = io.BytesIO()
    photo("chelsea").save(buffer, format="PNG")
    assert BlipImageProcessor(size=16)(buffer.getvalue())["pixel_values"].shape == (1, 3, 16, 16)
