"""Parity on config variants and less common arguments: activations, untied heads, sizes, embeddings inputs."""

from __future__ import annotations

import pytest
import torch

import blipkit
from tests.builders.inputs import sample_inputs
from tests.builders.tolerances import close
from tests.reference import TINY_BLIP, perturb_


def pair(tmp_path, class_name: str, **overrides):
    import transformers

    torch.manual_seed(0)
    reference = perturb_(getattr(transformers, class_name)(transformers.BlipConfig(**{**TINY_BLIP, **overrides})))
    reference.eval().save_pretrained(tmp_path)
    return reference, getattr(blipkit, class_name).from_pretrained(tmp_path)


@pytest.mark.parametrize("act", ["gelu_new", "relu", "quick_gelu", "silu"])
@torch.no_grad()
def test_activations(tmp_path, act):
    text, vision = {**TINY_BLIP["text_config"], "hidden_act": act}, {**TINY_BLIP["vision_config"], "hidden_act": act}
    reference, ours = pair(tmp_path, "BlipForConditionalGeneration", text_config=text, vision_config=vision)
    close(ours(**sample_inputs()).logits, reference(**sample_inputs()).logits)


@torch.no_grad()
def test_untied_lm_head_round_trip(tmp_path):
    import transformers

    text = {**TINY_BLIP["text_config"], "tie_word_embeddings": False}
    reference, ours = pair(
        tmp_path / "ref", "BlipForConditionalGeneration", tie_word_embeddings=False, text_config=text
    )
    assert ours.text_decoder.head.decoder is not None
    close(ours(**sample_inputs()).logits, reference(**sample_inputs()).logits)
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    close(again(**sample_inputs()).logits, reference(**sample_inputs()).logits)


@torch.no_grad()
def test_one_flag_false_still_ties(tmp_path):
    reference, ours = pair(tmp_path, "BlipForConditionalGeneration", tie_word_embeddings=False)
    assert ours.text_decoder.head.decoder is None
    close(ours(**sample_inputs()).logits, reference(**sample_inputs()).logits)


@torch.no_grad()
def test_text_model_inputs(tmp_path):
    reference, ours = pair(tmp_path, "BlipModel")
    inputs = sample_inputs()
    positions = torch.tensor([[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]])
    embeds = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    for kwargs in (
        {"input_ids": inputs["input_ids"], "position_ids": positions},
        {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]},
        {"encoder_embeds": embeds, "attention_mask": inputs["attention_mask"]},
    ):
        close(ours.text_model(**kwargs).last_hidden_state, reference.text_model(**kwargs).last_hidden_state)
    three_images = dict(inputs, pixel_values=torch.randn(3, 3, 32, 32))
    close(ours(**three_images).logits_per_image, reference(**three_images).logits_per_image)


@torch.no_grad()
def test_encoder_only_text_model_without_cross_attention(tmp_path):
    import transformers

    torch.manual_seed(0)
    reference = perturb_(
        transformers.BlipTextModel(transformers.BlipTextConfig(**TINY_BLIP["text_config"], is_decoder=False))
    )
    reference.eval().save_pretrained(tmp_path)
    ours = blipkit.BlipTextModel.from_pretrained(tmp_path)
    assert not hasattr(ours.layers[0], "cross_attn")
    inputs = sample_inputs()
    kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    close(ours(**kwargs).pooler_output, reference(**kwargs).pooler_output)


@torch.no_grad()
def test_other_grid_sizes_and_logits_to_keep(tmp_path):
    vision = {**TINY_BLIP["vision_config"], "image_size": 40, "patch_size": 8}
    reference, ours = pair(tmp_path, "BlipForConditionalGeneration", vision_config=vision)
    inputs = dict(sample_inputs(), pixel_values=torch.randn(2, 3, 40, 40))
    close(ours(**inputs).logits, reference(**inputs).logits)
    close(ours(**inputs, logits_to_keep=1).logits, reference(**inputs, logits_to_keep=1).logits)
    wide = dict(inputs, pixel_values=torch.randn(2, 3, 48, 40))
    close(ours(**wide, interpolate_pos_encoding=True).logits, reference(**wide, interpolate_pos_encoding=True).logits)
