"""Forward parity with the reference for every BLIP model class, on tiny perturbed checkpoints."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import blipkit
from tests.builders.configs import SAME_WIDTH
from tests.builders.devices import DEVICES, moved
from tests.builders.tolerances import close
from tests.conftest import IMAGES
from tests.reference import TINY_BLIP, reference_processor, save_reference

TEXTS = ["a cat lying on a blanket", "an astronaut", "a rocket lifting off into the blue sky", "coffee"]


@pytest.fixture(scope="module")
def inputs():
    """A padded batch of 4 real photographs (one grayscale, one RGBA) and 4 captions of different lengths."""
    images = [Image.open(p) for p in IMAGES]
    images[1] = images[1].convert("L")
    images[2] = images[2].convert("RGBA")
    return reference_processor()(images=images, text=TEXTS, padding=True, return_tensors="pt")


def pair(tmp_path_factory, class_name: str, **config_overrides):
    directory = tmp_path_factory.mktemp(class_name)
    reference = save_reference(class_name, directory, **config_overrides)
    ours = getattr(blipkit, class_name).from_pretrained(directory)
    return reference, ours


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_vision_model(tmp_path_factory, inputs, device):
    ref, ours = pair(tmp_path_factory, "BlipModel")
    vision_ref, vision_ours = ref.vision_model.to(device), ours.vision_model.to(device)
    inputs = moved(inputs, device)
    expected = vision_ref(pixel_values=inputs["pixel_values"], output_hidden_states=True)
    actual = vision_ours(inputs["pixel_values"], output_hidden_states=True)
    close(actual.last_hidden_state, expected.last_hidden_state)
    close(actual.pooler_output, expected.pooler_output)
    assert len(actual.hidden_states) == len(expected.hidden_states)
    for a, e in zip(actual.hidden_states, expected.hidden_states, strict=True):
        close(a, e)


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_blip_model(tmp_path_factory, inputs, device):
    ref, ours = (model.to(device) for model in pair(tmp_path_factory, "BlipModel"))
    inputs = moved(inputs, device)
    expected = ref(**inputs, return_loss=True)
    actual = ours(**inputs, return_loss=True)
    for name in ("loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        close(getattr(actual, name), getattr(expected, name))
    close(actual.text_model_output.last_hidden_state, expected.text_model_output.last_hidden_state)
    close(
        ours.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
        ref.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output,
    )
    close(
        ours.get_image_features(inputs["pixel_values"]).pooler_output,
        ref.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output,
    )
    close(
        ours.get_multimodal_features(inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"]),
        ref.get_multimodal_features(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
        ),
    )


@torch.no_grad()
def test_conditional_generation_forward_and_loss(tmp_path_factory, inputs):
    ref, ours = pair(tmp_path_factory, "BlipForConditionalGeneration")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    expected = ref(**inputs, labels=labels)
    actual = ours(**inputs, labels=labels)
    close(actual.logits, expected.logits)
    close(actual.loss, expected.loss)
    close(actual.image_embeds, expected.image_embeds)


@torch.no_grad()
def test_conditional_generation_label_smoothing(tmp_path_factory, inputs):
    ref, ours = pair(
        tmp_path_factory, "BlipForConditionalGeneration", text_config={**_tiny_text(), "label_smoothing": 0.1}
    )
    labels = inputs["input_ids"]
    close(ours(**inputs, labels=labels).loss, ref(**inputs, labels=labels).loss)


@torch.no_grad()
def test_question_answering_forward_and_loss(tmp_path_factory, inputs):
    ref, ours = pair(tmp_path_factory, "BlipForQuestionAnswering", vision_config=SAME_WIDTH["vision_config"])
    answers = reference_processor()(text=["two", "one cat", "yes", "no"], padding=True, return_tensors="pt")
    kwargs = dict(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs["pixel_values"],
        labels=answers["input_ids"],
        decoder_attention_mask=answers["attention_mask"],
    )
    expected, actual = ref(**kwargs), ours(**kwargs)
    close(actual.loss, expected.loss)
    close(actual.image_embeds, expected.image_embeds)


@pytest.mark.parametrize("use_itm_head", [True, False])
@torch.no_grad()
def test_image_text_retrieval(tmp_path_factory, inputs, use_itm_head):
    ref, ours = pair(tmp_path_factory, "BlipForImageTextRetrieval")
    expected = ref(**inputs, use_itm_head=use_itm_head)
    actual = ours(**inputs, use_itm_head=use_itm_head)
    close(actual.itm_score, expected.itm_score)
    close(actual.question_embeds, expected.question_embeds)


@torch.no_grad()
def test_text_models_standalone(tmp_path_factory, inputs):
    import transformers

    from tests.reference import perturb_

    config = transformers.BlipTextConfig(**TINY_BLIP["text_config"], encoder_hidden_size=48)
    for class_name in ("BlipTextModel", "BlipTextLMHeadModel"):
        torch.manual_seed(0)
        ref = perturb_(getattr(transformers, class_name)(config)).eval()
        directory = tmp_path_factory.mktemp(class_name)
        ref.save_pretrained(directory)
        ours = getattr(blipkit, class_name).from_pretrained(directory)
        image_tokens = torch.randn(4, 17, 48)
        kwargs = dict(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], encoder_hidden_states=image_tokens
        )
        if class_name == "BlipTextModel":
            for is_decoder in (False, True):
                e, a = ref(**kwargs, is_decoder=is_decoder), ours(**kwargs, is_decoder=is_decoder)
                close(a.last_hidden_state, e.last_hidden_state)
                close(a.pooler_output, e.pooler_output)
        else:
            e, a = ref(**kwargs, labels=inputs["input_ids"]), ours(**kwargs, labels=inputs["input_ids"])
            close(a.logits, e.logits)
            close(a.loss, e.loss)
            e = ref(**kwargs, labels=inputs["input_ids"], reduction="none")
            a = ours(**kwargs, labels=inputs["input_ids"], reduction="none")
            close(a.loss, e.loss)


def _tiny_text():
    return dict(TINY_BLIP["text_config"])
