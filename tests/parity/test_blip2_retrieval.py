"""BLIP-2's image-text heads against the reference: ITM, ITC, and the text / vision projection models."""

from __future__ import annotations

import pytest
import torch

import blipkit
from tests.builders.configs import QFORMER, QUERIES, TINY_OPT, VISION
from tests.builders.tolerances import close
from tests.reference import perturb_

QFORMER_TEXT = {**QFORMER, "vocab_size": 99, "max_position_embeddings": 32, "use_qformer_text_input": True,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # fmt: skip


def pair(tmp_path, class_name: str, image_token: int | None):
    import transformers

    config = transformers.Blip2Config(
        vision_config=VISION,
        qformer_config=QFORMER_TEXT,
        text_config=TINY_OPT,
        num_query_tokens=QUERIES,
        image_token_index=image_token,
        image_text_hidden_size=24,
    )
    torch.manual_seed(0)
    reference = perturb_(getattr(transformers, class_name)(config)).eval()
    reference.save_pretrained(tmp_path)
    return reference, getattr(blipkit, class_name).from_pretrained(tmp_path)


def text_inputs(image_token: int | None):
    ids = torch.tensor([[1, 7, 8, 9, 2], [1, 10, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    if image_token is not None:  # as a Blip2Processor lays them out: image placeholders first
        ids = torch.cat([torch.full((2, QUERIES), image_token), ids], dim=1)
        mask = torch.cat([torch.ones(2, QUERIES, dtype=torch.long), mask], dim=1)
    return ids, mask


@pytest.mark.parametrize("image_token", [None, 98])
@pytest.mark.parametrize("itm", [True, False])
@torch.no_grad()
def test_image_text_retrieval(tmp_path, image_token, itm):
    reference, ours = pair(tmp_path, "Blip2ForImageTextRetrieval", image_token)
    ids, mask = text_inputs(image_token)
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(6))
    kwargs = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask, "use_image_text_matching_head": itm}
    expected, actual = reference(**kwargs), ours(**kwargs)
    close(actual.logits_per_image, expected.logits_per_image)
    close(actual.logits_per_text, expected.logits_per_text)
    close(actual.text_embeds, expected.text_embeds)
    if not itm:
        close(actual.image_embeds, expected.image_embeds)


@torch.no_grad()
def test_projection_models(tmp_path):
    reference, ours = pair(tmp_path / "vision", "Blip2VisionModelWithProjection", None)
    pixels = torch.randn(2, 3, 28, 28)
    close(ours(pixels).image_embeds, reference(pixel_values=pixels).image_embeds)
    reference, ours = pair(tmp_path / "text", "Blip2TextModelWithProjection", None)
    ids, mask = text_inputs(None)
    expected = reference(input_ids=ids, attention_mask=mask)
    actual = ours(input_ids=ids, attention_mask=mask)
    close(actual.text_embeds, expected.text_embeds)
    close(actual.last_hidden_state, expected.last_hidden_state)


@torch.no_grad()
def test_retrieval_saved_by_blipkit_loads_in_reference(tmp_path):
    import transformers

    reference, ours = pair(tmp_path / "ref", "Blip2ForImageTextRetrieval", 98)
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.Blip2ForImageTextRetrieval.from_pretrained(tmp_path / "ours").eval()
    ids, mask = text_inputs(98)
    kwargs = {"pixel_values": torch.randn(2, 3, 28, 28), "input_ids": ids, "attention_mask": mask}
    close(again(**kwargs).logits_per_image, reference(**kwargs).logits_per_image)
