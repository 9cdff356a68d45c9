"""Generated ids identical to the reference's: greedy, beam search, sampling under a seed, prompts, penalties."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import blipkit
from tests.builders.configs import SAME_WIDTH
from tests.builders.models import boosted_reference
from tests.conftest import IMAGES
from tests.reference import reference_processor

PROMPTS = ["a picture of", "a photograph of a very small", "there is", "an"]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return boosted_reference("BlipForConditionalGeneration", tmp_path_factory.mktemp("captioner"))


@pytest.fixture(scope="module")
def answerer(tmp_path_factory):
    return boosted_reference("BlipForQuestionAnswering", tmp_path_factory.mktemp("vqa"), **SAME_WIDTH)


@pytest.fixture(scope="module")
def pixels():
    images = [Image.open(p) for p in IMAGES]
    images[1] = images[1].convert("L")
    return reference_processor()(images=images, return_tensors="pt")["pixel_values"]


def assert_same_ids(reference, ours, **kwargs):
    expected = reference.generate(**kwargs)
    actual = ours.generate(**kwargs)
    assert actual.dtype == torch.long
    assert actual.tolist() == expected.tolist()
    return actual


SETTINGS = [
    {},
    {"max_new_tokens": 12},
    {"max_length": 9},
    {"num_beams": 2},
    {"num_beams": 3, "num_return_sequences": 3},
    {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.6},
    {"num_beams": 5, "length_penalty": 2.0, "early_stopping": True},
    {"num_beams": 3, "early_stopping": "never", "max_new_tokens": 8},
    {"repetition_penalty": 1.5},
    {"no_repeat_ngram_size": 2, "max_new_tokens": 15},
    {"num_beams": 3, "no_repeat_ngram_size": 2, "repetition_penalty": 1.2},
    {"min_new_tokens": 6, "max_new_tokens": 10},
    {"min_length": 5, "num_beams": 2},
]


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_caption_ids_match(captioner, pixels, batch, settings):
    reference, ours = captioner
    assert_same_ids(reference, ours, pixel_values=pixels[:batch], **settings)


def test_settings_reach_both_early_and_late_finishes(captioner, pixels):
    """Guards the fixture: without mixed lengths the tests above would not exercise padding of finished rows."""
    _, ours = captioner
    ids = ours.generate(pixels, max_new_tokens=12)
    finished_early = [(row[1:-1] == 102).any().item() for row in ids]
    assert any(finished_early) and not all(finished_early)
    assert (ids == 0).any()  # finished greedy rows are filled with [PAD]
    beams = ours.generate(pixels, num_beams=3, max_new_tokens=12)
    assert (beams[:, -1] == 102).any() and not (beams == 0).any()  # the reference fills beam rows with [SEP]


@pytest.mark.parametrize("batch", [2, 3])
@pytest.mark.parametrize("settings", [{}, {"num_beams": 3}, {"num_beams": 2, "num_return_sequences": 2}], ids=str)
def test_prompted_captions_with_padding_match(captioner, pixels, batch, settings):
    reference, ours = captioner
    prompts = reference_processor()(text=PROMPTS[:batch], padding=True, return_tensors="pt")
    assert (prompts["attention_mask"] == 0).any()
    assert_same_ids(
        reference,
        ours,
        pixel_values=pixels[:batch],
        input_ids=prompts["input_ids"],
        attention_mask=prompts["attention_mask"],
        max_new_tokens=8,
        **settings,
    )


def test_left_padded_prompts_match(captioner, pixels):
    reference, ours = captioner
    tokenizer = reference_processor().tokenizer
    tokenizer.padding_side = "left"
    try:
        prompts = tokenizer(PROMPTS[:3], padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    for settings in ({}, {"num_beams": 3, "repetition_penalty": 1.3}):
        assert_same_ids(
            reference,
            ours,
            pixel_values=pixels[:3],
            input_ids=prompts["input_ids"],
            attention_mask=prompts["attention_mask"],
            max_new_tokens=6,
            **settings,
        )


@pytest.mark.parametrize("settings", [{}, {"num_beams": 3}, {"num_beams": 4, "num_return_sequences": 2}], ids=str)
def test_vqa_answer_ids_match(answerer, pixels, settings):
    reference, ours = answerer
    questions = reference_processor()(text=["how many cats?", "is it blue", "what", "who is this person?"],
                                      padding=True, return_tensors="pt")  # fmt: skip
    assert_same_ids(
        reference,
        ours,
        input_ids=questions["input_ids"],
        attention_mask=questions["attention_mask"],
        pixel_values=pixels,
        max_new_tokens=8,
        **settings,
    )


# Beam sampling over many seeds: one lucky seed once hid a difference in the order of its sampled candidates.
BEAM_SEEDS, SAMPLE_SEEDS = range(10), range(3)


@pytest.mark.parametrize(
    ("settings", "seeds"),
    [
        ({"do_sample": True}, SAMPLE_SEEDS),
        ({"do_sample": True, "temperature": 0.7, "top_k": 20}, SAMPLE_SEEDS),
        ({"do_sample": True, "top_p": 0.9, "top_k": 0}, SAMPLE_SEEDS),
        ({"do_sample": True, "num_return_sequences": 3}, SAMPLE_SEEDS),
        ({"do_sample": True, "num_beams": 2}, BEAM_SEEDS),
        ({"do_sample": True, "num_beams": 3}, BEAM_SEEDS),
        ({"do_sample": True, "num_beams": 2, "num_return_sequences": 2}, BEAM_SEEDS),
        (
            {"do_sample": True, "num_beams": 4, "num_return_sequences": 2, "top_k": 30, "length_penalty": 0.5},
            BEAM_SEEDS,
        ),
    ],
    ids=str,
)
def test_sampling_matches_the_reference_under_the_same_seed(captioner, pixels, settings, seeds):
    reference, ours = captioner
    for seed in seeds:
        torch.manual_seed(seed)
        expected = reference.generate(pixel_values=pixels, max_new_tokens=10, **settings)
        torch.manual_seed(seed)
        actual = ours.generate(pixels, max_new_tokens=10, **settings)
        assert actual.tolist() == expected.tolist(), f"seed {seed}"


def test_sampling_with_a_generator_is_reproducible(captioner, pixels):
    _, ours = captioner
    runs = [
        ours.generate(pixels, do_sample=True, max_new_tokens=10, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    other = ours.generate(pixels, do_sample=True, max_new_tokens=10, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


@pytest.mark.parametrize(
    "settings",
    [{"top_p": 0.9, "num_return_sequences": 3}, {"num_beams": 2, "num_return_sequences": 2}, {"top_k": 5}],
    ids=str,
)
def test_a_generator_per_prompt_samples_each_image_as_if_it_were_alone(captioner, pixels, settings):
    """One generator per image: a batch's samples equal each image's own call with its own seed, in any batch."""
    _, ours = captioner

    def seeded(seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    kwargs = {"do_sample": True, "max_new_tokens": 8, **settings}
    rows = settings.get("num_return_sequences", 1)
    batched = ours.generate(pixels, generator=seeded([11, 12, 13, 14]), **kwargs)
    for i, seed in enumerate([11, 12, 13, 14]):
        alone = ours.generate(pixels[i : i + 1], generator=seeded([seed])[0], **kwargs)
        mine = batched[i * rows : (i + 1) * rows, : alone.shape[1]]
        assert mine.tolist() == alone.tolist()
        filler = torch.tensor([0, 102])  # [PAD] after a finished row; beam search fills with [SEP], as the reference
        assert torch.isin(batched[i * rows : (i + 1) * rows, alone.shape[1] :], filler).all()
    with pytest.raises(ValueError, match="3 generators for 4 prompts: give one per prompt, or one"):
        ours.generate(pixels, generator=seeded([1, 2, 3]), **kwargs)


def test_image_tokens_are_encoded_once_and_not_copied_per_beam(captioner, pixels, monkeypatch):
    """Cross-attention keys/values: one projection per image per layer for the whole search, never per beam."""
    _, ours = captioner
    layer = ours.text_decoder.bert.layers[0].cross_attn
    calls = []
    original = layer.project_kv

    def spy(context, dtype=None):
        calls.append(context.shape)
        return original(context, dtype)

    monkeypatch.setattr(layer, "project_kv", spy)
    ours.generate(pixels, num_beams=4, max_new_tokens=6)
    assert calls == [torch.Size([4, 17, 48])]


def test_bad_generation_arguments(captioner, pixels):
    _, ours = captioner
    with pytest.raises(TypeError, match="generate\\(\\) got unknown arguments: num_beam"):
        ours.generate(pixels, num_beam=3)
    with pytest.raises(ValueError, match="num_return_sequences \\(4\\) cannot exceed num_beams \\(2\\)"):
        ours.generate(pixels, num_beams=2, num_return_sequences=4)
    with pytest.raises(ValueError, match="generation would reach 45 tokens but the model has 40 positions"):
        ours.generate(pixels, max_new_tokens=44)
    with pytest.raises(ValueError, match="one prompt per image"):
        ours.generate(pixels, input_ids=torch.tensor([[101, 1037, 102]]))


def test_generation_config_json_is_ignored_as_the_reference_ignores_it(captioner, tmp_path, pixels):
    import json

    import transformers

    _, ours = captioner
    ours.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 3, "max_new_tokens": 5}))
    reloaded = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)
    reference = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path).eval()
    expected = reference.generate(pixel_values=pixels)
    assert reloaded.generate(pixels).tolist() == expected.tolist()
    assert expected.shape[1] == 21  # greedy, 20 new tokens: the file's settings were not used


def test_in_memory_generation_config_sets_defaults(captioner, pixels):
    _, ours = captioner
    default = ours.generation_config
    try:
        ours.generation_config = default.updated(num_beams=3, max_new_tokens=5)
        assert ours.generate(pixels).tolist() == ours.generate(pixels, num_beams=3, max_new_tokens=5).tolist()
    finally:
        ours.generation_config = default
