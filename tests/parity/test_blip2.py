"""Blip2ForConditionalGeneration (OPT) against the reference: image features, logits, loss, round trip."""

from __future__ import annotations

import pytest
import torch

import blipkit
from tests.builders.configs import IMAGE_TOKEN, SAMPLING
from tests.builders.devices import DEVICES, moved
from tests.builders.inputs import prompt_inputs
from tests.builders.models import reference_blip2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", [{}, {"do_layer_norm_before": False, "word_embed_proj_dim": 16}], ids=str)
@torch.no_grad()
def test_forward_logits_loss_and_image_features(tmp_path, variant, device):
    reference = reference_blip2(tmp_path, **variant).to(device)
    ours = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path, device=device)
    inputs = moved(prompt_inputs(), device)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN, -100)
    labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
    expected, actual = reference(**inputs, labels=labels), ours(**inputs, labels=labels)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(actual.logits[real], expected.logits[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=1e-4)
    features = ours.get_image_features(inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(
        features, reference.get_image_features(inputs["pixel_values"]).pooler_output, atol=1e-5, rtol=1e-4
    )


@torch.no_grad()
def test_saved_by_blipkit_loads_in_reference(tmp_path):
    import transformers

    reference = reference_blip2(tmp_path / "ref")
    ours = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    inputs = prompt_inputs()
    torch.testing.assert_close(again(**inputs).logits, reference(**inputs).logits)


def test_image_token_count_must_match(tmp_path):
    reference_blip2(tmp_path)
    ours = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path)
    inputs = prompt_inputs()
    inputs["input_ids"] = inputs["input_ids"][:, 1:]
    inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
    with pytest.raises(ValueError, match="the prompt has 7 image tokens \\(id 98\\) but the images give 8"):
        ours(**inputs)


def test_unsupported_language_model_is_named():
    with pytest.raises(blipkit.ConfigError, match="unsupported language model 'llama'; supported: opt, t5"):
        blipkit.Blip2Config.from_dict({"text_config": {"model_type": "llama"}})


GENERATION_SETTINGS = [
    {"max_new_tokens": 6},
    {},
    {"num_beams": 3, "max_new_tokens": 6},
    {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 5, "length_penalty": 0.5},
    {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2, "max_new_tokens": 8},
    {"min_new_tokens": 4, "max_new_tokens": 6},
    # With 91 as the end token the rows finish at different steps, so finished rows get padded.
    {"eos_token_id": 91, "max_new_tokens": 8},
    {"eos_token_id": 91, "num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 8},
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("settings", GENERATION_SETTINGS, ids=str)
def test_generated_ids_match(tmp_path, settings, device):
    reference = reference_blip2(tmp_path)
    with torch.no_grad():  # make [eos] (2) likely, so rows finish at different steps
        reference.language_model.model.decoder.embed_tokens.weight[2] *= 2.5
    reference.save_pretrained(tmp_path)
    reference.to(device)
    ours = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path, device=device)
    inputs = moved(prompt_inputs(), device)
    for kwargs in ({"pixel_values": inputs["pixel_values"]}, inputs):
        expected = reference.generate(**kwargs, **settings)
        actual = ours.generate(**kwargs, **settings)
        assert actual.tolist() == expected.tolist()


@pytest.mark.parametrize("settings", SAMPLING, ids=str)
def test_sampling_matches_under_the_same_seed(tmp_path, settings):
    reference = reference_blip2(tmp_path)
    with torch.no_grad():  # make the end token likely, so sampled beams finish at different steps
        reference.language_model.model.decoder.embed_tokens.weight[2] *= 2.5
    reference.save_pretrained(tmp_path)
    ours = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path)
    inputs = prompt_inputs()
    for seed in range(10):
        torch.manual_seed(seed)
        expected = reference.generate(**inputs, max_new_tokens=6, **settings)
        torch.manual_seed(seed)
        assert ours.generate(**inputs, max_new_tokens=6, **settings).tolist() == expected.tolist(), f"seed {seed}"


def test_rows_finishing_early_are_padded(tmp_path):
    reference_blip2(tmp_path)
    ours = blipkit.Blip2ForConditionalGeneration.from_pretrained(tmp_path)
    ids = ours.generate(**prompt_inputs(), eos_token_id=91, max_new_tokens=8)
    finished_at = [row.tolist().index(91) if 91 in row.tolist() else None for row in ids[:, 8:]]
    assert len(set(finished_at)) > 1 and (ids[:, 8:] == 1).any()  # [PAD] (1) after an early finish


@torch.no_grad()
def test_blip2_model_features_and_forward(tmp_path):
    import transformers

    reference_blip2(tmp_path / "cg")
    reference = transformers.Blip2Model.from_pretrained(tmp_path / "cg").eval()
    ours = blipkit.Blip2Model.from_pretrained(tmp_path / "cg")
    inputs = prompt_inputs()
    pixels, ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    close = lambda a, e: torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4)  # noqa: E731
    close(
        ours.get_image_features(pixels).pooler_output, reference.get_image_features(pixel_values=pixels).pooler_output
    )
    close(ours.get_qformer_features(pixels), reference.get_qformer_features(pixel_values=pixels))
    text = torch.tensor([[2, 15, 27, 33], [1, 2, 44, 12]])
    text_mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    real = text_mask.bool()
    close(
        ours.get_text_features(text, text_mask).last_hidden_state[real],
        reference.get_text_features(input_ids=text, attention_mask=text_mask).last_hidden_state[real],
    )
    labels = ids.masked_fill(ids == IMAGE_TOKEN, -100).masked_fill(mask == 0, -100)
    close(ours(**inputs, labels=labels).loss, reference(**inputs, labels=labels).loss)
