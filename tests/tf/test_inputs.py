"""What the Keras classes take: numpy arrays, TensorFlow tensors and torch tensors alike, and what blipkit's processor
returns with return_tensors="np"."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tf.cases import FORWARD, PROMPTS, arrays, as_torch, assert_same_outputs

tf = pytest.importorskip("tensorflow")

CONVERTERS = {
    "tf.constant": lambda inputs: {k: tf.constant(v) for k, v in inputs.items()},
    "torch": as_torch,
}


@pytest.mark.parametrize("converter", CONVERTERS)
@pytest.mark.parametrize("case", ["vision", "lm-loss", "blip-loss", "caption-loss", "vqa-loss", "itm", "itc"])
def test_tensors_give_the_outputs_of_numpy_arrays(pair, inputs, case, converter):
    checkpoint, call = FORWARD[case]
    _, model = pair(checkpoint)
    assert_same_outputs(arrays(call(model, CONVERTERS[converter](inputs))), arrays(call(model, inputs)), atol=0)


# A prompted captioning setting test_generation compiles too, so that a whole run compiles it once.
COMPILED = {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8}


@pytest.mark.parametrize(
    ("converter", "jit_compile"), [("tf.constant", False), ("torch", False), ("tf.constant", True)]
)
def test_tensors_give_the_ids_of_numpy_arrays(pair, inputs, converter, jit_compile):
    _, captioner = pair("caption")
    _, answerer = pair("vqa")
    prompted = {"pixel_values": inputs["pixel_values"], "input_ids": inputs["prompt_ids"],
                "attention_mask": inputs["prompt_mask"]}  # fmt: skip
    questions = {"input_ids": inputs["question_ids"], "pixel_values": inputs["pixel_values"],
                 "attention_mask": inputs["question_mask"]}  # fmt: skip
    short = {"max_new_tokens": 3}
    runs = (
        [(captioner, prompted, COMPILED)]
        if jit_compile
        else [(captioner, prompted, short), (answerer, questions, short)]
    )
    for model, model_inputs, settings in runs:
        expected = np.asarray(model.generate(**model_inputs, jit_compile=jit_compile, **settings))
        actual = model.generate(**CONVERTERS[converter](model_inputs), jit_compile=jit_compile, **settings)
        np.testing.assert_array_equal(np.asarray(actual), expected)


def photographs():
    from PIL import Image

    from tests.conftest import IMAGES

    return [Image.open(path) for path in IMAGES[2:]]


def test_the_processors_numpy_pixels_caption_as_torch_does(pair, processor):
    torch_model, tf_model = pair("caption")
    pixels = processor(images=photographs(), return_tensors="np")["pixel_values"]
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.float32
    expected = torch_model.generate(processor(images=photographs(), return_tensors="pt")["pixel_values"])
    np.testing.assert_array_equal(np.asarray(tf_model.generate(pixels)), expected.numpy())


def test_the_processors_numpy_prompts_caption_as_torch_does(pair, processor):
    torch_model, tf_model = pair("caption")
    encoded = processor(images=photographs(), text=PROMPTS, padding=True, return_tensors="np")
    assert all(isinstance(v, np.ndarray) for v in encoded.values()) and encoded["input_ids"].dtype == np.int64
    expected = torch_model.generate(**processor(images=photographs(), text=PROMPTS, padding=True))
    np.testing.assert_array_equal(np.asarray(tf_model.generate(**encoded)), expected.numpy())
