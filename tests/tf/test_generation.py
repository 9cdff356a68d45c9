"""Generated ids identical to blipkit's torch classes (captions with and without prompts, VQA answers), eagerly and
as one compiled program; sampling reproducible under a seed, and the same compiled as eager."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.tf.cases import SEP, as_torch

# (settings, compiled too): every setting runs eagerly. Compiling costs seconds per setting, so a subset that still
# covers each search (greedy, beams, returned beams, length penalty with early stopping, every logits processor) is
# also run with jit_compile=True; the compiled runs are the ones the JAX run repeats (marker ``backends``).
CAPTION_SETTINGS = [
    ({}, True),
    ({"max_length": 9, "min_length": 5}, False),
    ({"num_beams": 3, "max_new_tokens": 10}, False),
    ({"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8}, False),
    ({"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.6, "max_new_tokens": 10}, False),
    ({"num_beams": 3, "num_return_sequences": 2, "length_penalty": 2.0, "early_stopping": True, "max_new_tokens": 10},
     True),
    ({"num_beams": 3, "early_stopping": "never", "max_new_tokens": 8}, False),
    ({"repetition_penalty": 1.5, "max_new_tokens": 10}, False),
    ({"no_repeat_ngram_size": 2, "max_new_tokens": 10}, False),
    ({"min_new_tokens": 6, "max_new_tokens": 10}, False),
    ({"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 4, "max_new_tokens": 10}, True),
]  # fmt: skip
PROMPTED_SETTINGS = [
    ({"max_new_tokens": 8}, False),
    ({"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8}, True),
]
ANSWER_SETTINGS = [({}, False), ({"num_beams": 3, "num_return_sequences": 2}, True)]
SAMPLING = [
    {"do_sample": True, "top_k": 10, "top_p": 0.9, "temperature": 0.7, "num_return_sequences": 2, "max_new_tokens": 8},
    {"do_sample": True, "num_beams": 2, "num_return_sequences": 2, "top_k": 10, "max_new_tokens": 8},
]


def runs(settings: list[tuple[dict, bool]]) -> list:
    """pytest params (settings, jit_compile): each setting eagerly, and compiled where marked."""
    eager = [pytest.param(s, False, id=f"{s}-eager") for s, _ in settings]
    compiled = [pytest.param(s, True, id=f"{s}-jit", marks=pytest.mark.backends) for s, jit in settings if jit]
    return eager + compiled


def caption_inputs(inputs, prompted: bool = False) -> dict:
    if not prompted:
        return {"pixel_values": inputs["pixel_values"]}
    return {"pixel_values": inputs["pixel_values"], "input_ids": inputs["prompt_ids"],
            "attention_mask": inputs["prompt_mask"]}  # fmt: skip


def answer_inputs(inputs) -> dict:
    return {"input_ids": inputs["question_ids"], "pixel_values": inputs["pixel_values"],
            "attention_mask": inputs["question_mask"]}  # fmt: skip


def assert_same_ids(torch_model, tf_model, inputs: dict, jit_compile: bool, **settings) -> None:
    expected = torch_model.generate(**as_torch(inputs), **settings).numpy()
    actual = np.asarray(tf_model.generate(**inputs, jit_compile=jit_compile, **settings))
    assert actual.dtype == np.int32
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(("settings", "jit_compile"), runs(CAPTION_SETTINGS))
def test_caption_ids_match_torch(pair, inputs, settings, jit_compile):
    assert_same_ids(*pair("caption"), caption_inputs(inputs), jit_compile, **settings)


@pytest.mark.parametrize(("settings", "jit_compile"), runs(PROMPTED_SETTINGS))
def test_prompted_caption_ids_match_torch(pair, inputs, settings, jit_compile):
    """Two prompts of different lengths, right-padded, with the processor's attention mask."""
    assert_same_ids(*pair("caption"), caption_inputs(inputs, prompted=True), jit_compile, **settings)


@pytest.mark.parametrize(("settings", "jit_compile"), runs(ANSWER_SETTINGS))
def test_answer_ids_match_torch(pair, inputs, settings, jit_compile):
    """Two questions of different lengths, padded."""
    assert_same_ids(*pair("vqa"), answer_inputs(inputs), jit_compile, **settings)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager", "jit"])
def test_interpolated_caption_ids_match_torch(pair, inputs, jit_compile):
    """With the settings of the first caption test, whose compiled program (for images of the model's size) must not
    be reused for bigger ones."""
    pixels = {"pixel_values": inputs["square_pixel_values"]}
    assert_same_ids(*pair("caption"), pixels, jit_compile, interpolate_pos_encoding=True, **CAPTION_SETTINGS[0][0])


def test_rows_finish_at_different_steps(pair, inputs):
    """Guards the checkpoints: without rows that end at different steps (or not at all), the tests above would not
    exercise how finished rows are padded and finished beams kept."""
    caption, _ = pair("caption")
    vqa, _ = pair("vqa")
    for ids in (
        caption.generate(**as_torch(caption_inputs(inputs))),
        caption.generate(**as_torch(caption_inputs(inputs)), num_beams=3),
        vqa.generate(**as_torch(answer_inputs(inputs))),
        vqa.generate(**as_torch(answer_inputs(inputs)), num_beams=3, num_return_sequences=2),
    ):
        ends = {tuple((row[1:] == SEP).nonzero()[:1].flatten().tolist()) for row in ids}
        assert len(ends) > 1, ids


def sample(model, inputs: dict, **settings) -> np.ndarray:
    return np.asarray(model.generate(**inputs, **settings))


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape != b.shape or bool((a != b).any())


@pytest.mark.parametrize("settings", SAMPLING, ids=str)
def test_sampling_is_reproducible_under_a_seed(pair, inputs, settings):
    _, tf_model = pair("caption")
    pixels = caption_inputs(inputs)
    first = sample(tf_model, pixels, seed=1, **settings)
    assert first.shape[0] == 2 * settings["num_return_sequences"]
    np.testing.assert_array_equal(sample(tf_model, pixels, seed=1, **settings), first)
    assert differ(sample(tf_model, pixels, seed=2, **settings), first)


def test_compiled_sampling_is_reproducible_under_a_seed(pair, inputs):
    """A program compiled for one seed is reused for that seed only."""
    _, tf_model = pair("caption")
    pixels, settings = caption_inputs(inputs), {"do_sample": True, "top_k": 10, "max_new_tokens": 8}
    first = sample(tf_model, pixels, seed=1, jit_compile=True, **settings)
    np.testing.assert_array_equal(sample(tf_model, pixels, seed=1, jit_compile=True, **settings), first)
    assert differ(sample(tf_model, pixels, seed=2, jit_compile=True, **settings), first)


@pytest.mark.backends
@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's XLA draws other numbers than its own kernels for the same stateless seed (Philox too)",
)
@pytest.mark.parametrize("settings", SAMPLING, ids=str)
def test_compiled_sampling_equals_eager(pair, inputs, settings):
    _, tf_model = pair("caption")
    pixels = caption_inputs(inputs)
    compiled = sample(tf_model, pixels, seed=1, jit_compile=True, **settings)
    np.testing.assert_array_equal(compiled, sample(tf_model, pixels, seed=1, **settings))


def test_sampled_answers_are_reproducible(pair, inputs):
    _, tf_model = pair("vqa")
    questions, settings = answer_inputs(inputs), {"do_sample": True, "top_k": 5, "max_new_tokens": 8}
    first = sample(tf_model, questions, seed=3, **settings)
    np.testing.assert_array_equal(sample(tf_model, questions, seed=3, **settings), first)
    assert differ(sample(tf_model, questions, seed=4, **settings), first)
