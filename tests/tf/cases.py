"""What the Keras tests share: tiny checkpoints of every class, their inputs, the forward calls run on both
frameworks, and how two outputs are compared."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

# Checkpoint directory -> the class (blipkit's torch name; the Keras twin is TF + this) that reads it.
CLASSES = {
    "blip": "BlipModel",
    "caption": "BlipForConditionalGeneration",
    "vqa": "BlipForQuestionAnswering",
    "itm": "BlipForImageTextRetrieval",
    "text": "BlipTextModel",
    "lm": "BlipTextLMHeadModel",
    "vision": "BlipVisionModel",
}

# A bias towards [SEP] in the generating models' heads: on the photographs below some rows then finish early and
# others run to the length limit, so the padding of finished rows and the bookkeeping of finished beams are used.
SEP = 102
SEP_BOOST = {"caption": 1.7, "vqa": 1.0}

PROMPTS = ["a picture of", "a picture of a big"]
TEXTS = ["a cat lying on a blanket", "an astronaut"]
QUESTIONS = ["where is the red thing in the picture?", "is it big?"]
ANSWERS = ["on the table", "yes"]


def save_checkpoints(root: Path) -> dict[str, Path]:
    """A tiny perturbed reference (transformers) checkpoint of each class in ``CLASSES``, with the BLIP processor
    beside the task models; the text models' cross-attention reads the vision width (48), not the text width."""
    import torch
    import transformers

    from tests.builders.configs import SAME_WIDTH
    from tests.reference import TINY_BLIP, perturb_, save_reference

    for name in ("blip", "caption", "vqa", "itm"):
        model = save_reference(CLASSES[name], root / name, **(SAME_WIDTH if name == "vqa" else {}))
        if name in SEP_BOOST:
            with torch.no_grad():
                model.text_decoder.cls.predictions.bias[SEP] += SEP_BOOST[name]
            model.save_pretrained(root / name)
    text_config = transformers.BlipTextConfig(**TINY_BLIP["text_config"], encoder_hidden_size=48)
    parts = {
        "text": transformers.BlipTextModel(text_config),
        "lm": transformers.BlipTextLMHeadModel(text_config),
        "vision": transformers.BlipVisionModel(transformers.BlipVisionConfig(**TINY_BLIP["vision_config"])),
    }
    for name, model in parts.items():
        perturb_(model).eval().save_pretrained(root / name)
    return {name: root / name for name in CLASSES}


def sample_inputs(processor) -> dict[str, np.ndarray]:
    """Numpy inputs for every forward case: two photographs at the model's size and at bigger ones, padded texts
    with their labels (-100 on padding), padded questions and answers (VQA's labels are the answer ids themselves:
    its decoder reads them as input), and a context for cross-attention."""
    from PIL import Image

    from tests.conftest import IMAGES

    images = [Image.open(path) for path in IMAGES[2:]]

    def pixels(**size) -> np.ndarray:
        return processor(images=images, return_tensors="np", **size)["pixel_values"]

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = processor.tokenizer(texts, padding=True)
        return np.asarray(encoded["input_ids"]), np.asarray(encoded["attention_mask"])

    input_ids, attention_mask = encode(TEXTS)
    question_ids, question_mask = encode(QUESTIONS)
    answer_ids, answer_mask = encode(ANSWERS)
    prompt_ids, prompt_mask = encode(PROMPTS)
    context = np.random.default_rng(0).standard_normal((2, 5, 48)).astype(np.float32)
    return {
        "pixel_values": pixels(),
        "square_pixel_values": pixels(size={"height": 48, "width": 48}),
        "oblong_pixel_values": pixels(size={"height": 40, "width": 56}),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": np.where(attention_mask == 1, input_ids, -100),
        "question_ids": question_ids,
        "question_mask": question_mask,
        "answer_ids": answer_ids,
        "answer_mask": answer_mask,
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "context": context,
    }


def as_torch(inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v).long() if v.dtype.kind == "i" else torch.from_numpy(v) for k, v in inputs.items()}


# Case -> (checkpoint, the call): each call runs unchanged on the torch class (torch inputs) and the Keras class
# (numpy inputs), so the two share their argument names and positions.
FORWARD = {
    "vision": ("vision", lambda m, x: m(x["pixel_values"], output_hidden_states=True)),
    "vision-interpolated": ("vision", lambda m, x: m(x["oblong_pixel_values"], interpolate_pos_encoding=True)),
    "text": ("text", lambda m, x: m(x["input_ids"], x["attention_mask"], output_hidden_states=True)),
    "text-causal-cross-attention": (
        "text",
        lambda m, x: m(x["input_ids"], x["attention_mask"], encoder_hidden_states=x["context"], is_decoder=True),
    ),
    "lm-loss": (
        "lm",
        lambda m, x: m(
            x["input_ids"],
            x["attention_mask"],
            encoder_hidden_states=x["context"],
            labels=x["labels"],
            output_hidden_states=True,
        ),
    ),  # fmt: skip
    "lm-loss-per-row": (
        "lm",
        lambda m, x: m(x["input_ids"], x["attention_mask"], labels=x["labels"], reduction="none"),
    ),
    "lm-return-logits": ("lm", lambda m, x: m(x["input_ids"], x["attention_mask"], return_logits=True)),
    "blip-loss": ("blip", lambda m, x: m(x["input_ids"], x["pixel_values"], x["attention_mask"], return_loss=True)),
    "blip-interpolated": (
        "blip",
        lambda m, x: m(x["input_ids"], x["square_pixel_values"], x["attention_mask"], interpolate_pos_encoding=True),
    ),
    "blip-text-features": ("blip", lambda m, x: m.get_text_features(x["input_ids"], x["attention_mask"])),
    "blip-image-features": ("blip", lambda m, x: m.get_image_features(x["pixel_values"])),
    "blip-image-features-interpolated": (
        "blip",
        lambda m, x: m.get_image_features(x["oblong_pixel_values"], interpolate_pos_encoding=True),
    ),
    "caption": ("caption", lambda m, x: m(x["pixel_values"], x["input_ids"], x["attention_mask"])),
    "caption-loss": (
        "caption",
        lambda m, x: m(x["pixel_values"], x["input_ids"], x["attention_mask"], labels=x["labels"]),
    ),
    "caption-interpolated": (
        "caption",
        lambda m, x: m(x["square_pixel_values"], x["input_ids"], labels=x["labels"], interpolate_pos_encoding=True),
    ),
    "vqa-loss": (
        "vqa",
        lambda m, x: m(x["question_ids"], x["pixel_values"], attention_mask=x["question_mask"], labels=x["answer_ids"]),
    ),  # fmt: skip
    "vqa-decoder-input-ids": (
        "vqa",
        lambda m, x: m(
            x["question_ids"],
            x["pixel_values"],
            decoder_input_ids=x["answer_ids"],
            decoder_attention_mask=x["answer_mask"],
            attention_mask=x["question_mask"],
        ),
    ),  # fmt: skip
    "itm": ("itm", lambda m, x: m(x["input_ids"], x["pixel_values"], attention_mask=x["attention_mask"])),
    "itc": (
        "itm",
        lambda m, x: m(x["input_ids"], x["pixel_values"], use_itm_head=False, attention_mask=x["attention_mask"]),
    ),
    "itm-interpolated": (
        "itm",
        lambda m, x: m(
            x["input_ids"], x["oblong_pixel_values"], attention_mask=x["attention_mask"], interpolate_pos_encoding=True
        ),
    ),  # fmt: skip
    "itm-image-features": ("itm", lambda m, x: m.get_image_features(x["pixel_values"])),
    "itm-text-features": ("itm", lambda m, x: m.get_text_features(x["input_ids"], x["attention_mask"])),
}


def arrays(output: Any, name: str = "") -> dict[str, np.ndarray]:
    """Every tensor of an output (a tensor, a tuple, an output dataclass, nested) as numpy, by its dotted path."""
    if output is None:
        return {}
    if dataclasses.is_dataclass(output):
        fields = ((f.name, getattr(output, f.name)) for f in dataclasses.fields(output))
        return {k: v for field, value in fields for k, v in arrays(value, f"{name}{field}.").items()}
    if isinstance(output, (tuple, list)):
        return {k: v for i, value in enumerate(output) for k, v in arrays(value, f"{name}{i}.").items()}
    return {name.rstrip(".") or "output": np.asarray(output)}


def assert_same_outputs(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], atol: float) -> None:
    """The same fields set on both sides, each of the same shape and within ``atol``."""
    assert expected, "the reference returned no tensors"
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        np.testing.assert_allclose(actual[key], value, rtol=0, atol=atol, err_msg=key)
