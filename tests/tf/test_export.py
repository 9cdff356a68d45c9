"""``model.export``: a TensorFlow SavedModel whose ``serve`` signature generates the ids ``generate`` gives."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a SavedModel is TensorFlow's")


def serve(directory, *arrays):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(directory))  # kept alive while serve runs: it owns the variables
    return loaded.serve(*(tf.constant(a, dtype=tf.float32 if a.dtype.kind == "f" else tf.int32) for a in arrays))


@pytest.mark.parametrize("settings", [{}, {"num_beams": 3, "max_new_tokens": 8}], ids=["greedy", "beams"])
def test_a_captioners_savedmodel_gives_generates_ids_for_any_batch(pair, inputs, settings, tmp_path):
    _, model = pair("caption")
    model.export(tmp_path / "saved", **settings)
    pixels = inputs["pixel_values"]
    for batch in (pixels, pixels[:1]):  # the batch is open
        np.testing.assert_array_equal(serve(tmp_path / "saved", batch), model.generate(batch, **settings))


def test_a_prompted_captioners_savedmodel_takes_prompts_of_its_length(pair, inputs, tmp_path):
    _, model = pair("caption")
    prompt = inputs["prompt_ids"][:, :5]  # "[CLS] a picture of [SEP]" and a longer prompt cut to the same length
    prompt[:, -1] = 102
    model.export(tmp_path / "saved", prompt_length=5)
    expected = model.generate(inputs["pixel_values"], input_ids=prompt)
    np.testing.assert_array_equal(serve(tmp_path / "saved", inputs["pixel_values"], prompt), expected)


def test_a_vqa_savedmodel_answers_padded_questions(pair, inputs, tmp_path):
    _, model = pair("vqa")
    model.export(tmp_path / "saved", num_beams=2)
    questions, mask = inputs["question_ids"], inputs["question_mask"]
    expected = model.generate(questions, inputs["pixel_values"], attention_mask=mask, num_beams=2)
    np.testing.assert_array_equal(serve(tmp_path / "saved", questions, inputs["pixel_values"], mask), expected)


def test_export_refuses_other_formats(pair, tmp_path):
    _, model = pair("caption")
    with pytest.raises(ValueError, match="the generating models export format='tf_saved_model' only, got 'onnx'"):
        model.export(tmp_path / "saved", format="onnx")
