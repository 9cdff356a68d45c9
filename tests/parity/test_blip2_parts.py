"""BLIP-2 building blocks against the reference: the EVA ViT image encoder and the Q-Former."""

from __future__ import annotations

import json

import pytest
import torch

import blipkit
from tests.builders.configs import QFORMER, VISION
from tests.builders.tolerances import close
from tests.reference import perturb_


def saved(tmp_path, class_name: str, config_name: str, **config):
    import transformers

    torch.manual_seed(0)
    reference = perturb_(getattr(transformers, class_name)(getattr(transformers, config_name)(**config))).eval()
    reference.save_pretrained(tmp_path)
    return reference, getattr(blipkit, class_name).from_pretrained(tmp_path)


@pytest.mark.parametrize("qkv_bias", [True, False])
@torch.no_grad()
def test_vision_model(tmp_path, qkv_bias):
    reference, ours = saved(tmp_path, "Blip2VisionModel", "Blip2VisionConfig", **VISION, qkv_bias=qkv_bias)
    pixels = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    expected, actual = reference(pixel_values=pixels), ours(pixels)
    close(actual.last_hidden_state, expected.last_hidden_state)
    close(actual.pooler_output, expected.pooler_output)
    large = torch.randn(2, 3, 42, 56)
    close(
        ours(large, interpolate_pos_encoding=True).last_hidden_state,
        reference(pixel_values=large, interpolate_pos_encoding=True).last_hidden_state,
    )


@pytest.mark.parametrize("text_input", [False, True])
@torch.no_grad()
def test_qformer(tmp_path, text_input):
    reference, ours = saved(
        tmp_path, "Blip2QFormerModel", "Blip2QFormerConfig", **QFORMER, use_qformer_text_input=text_input
    )
    generator = torch.Generator().manual_seed(2)
    queries = torch.randn(2, 6, 32, generator=generator)
    image = torch.randn(2, 10, 48, generator=generator)
    image_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])
    kwargs = {"encoder_hidden_states": image, "encoder_attention_mask": image_mask}
    expected, actual = reference(query_embeds=queries, **kwargs), ours(queries, **kwargs)
    close(actual.last_hidden_state, expected.last_hidden_state)
    close(actual.pooler_output, expected.pooler_output)
    if text_input:  # queries followed by 4 text tokens, one of them padding
        tokens = torch.cat([queries, torch.randn(2, 4, 32, generator=generator)], dim=1)
        mask = torch.tensor([[1] * 10, [1] * 9 + [0]])
        # (Without an image mask: with text input the reference sizes it for all tokens and fails.)
        expected = reference(query_embeds=tokens, query_length=6, attention_mask=mask, encoder_hidden_states=image)
        actual = ours(tokens, query_length=6, attention_mask=mask, encoder_hidden_states=image)
        close(actual.last_hidden_state, expected.last_hidden_state)


def test_configs_match_reference_defaults(tmp_path):
    import transformers

    for name in ("Blip2VisionConfig", "Blip2QFormerConfig"):
        getattr(transformers, name)().save_pretrained(tmp_path / name)
        written = json.loads((tmp_path / name / "config.json").read_text())
        ours = getattr(blipkit, name)().to_dict()
        for key, value in written.items():
            if key not in ("transformers_version", "architectures", "dtype"):
                assert ours[key] == value, (name, key)


def test_saved_by_blipkit_loads_in_reference(tmp_path):
    import transformers

    reference, ours = saved(tmp_path / "ref", "Blip2QFormerModel", "Blip2QFormerConfig", **QFORMER)
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.Blip2QFormerModel.from_pretrained(tmp_path / "ours").eval()
    queries = torch.randn(1, 6, 32)
    image = torch.randn(1, 10, 48)
    with torch.no_grad():
        close(
            again(query_embeds=queries, encoder_hidden_states=image).last_hidden_state,
            reference(query_embeds=queries, encoder_hidden_states=image).last_hidden_state,
        )
