"""Documented departures from the reference's defaults, and position-embedding interpolation."""

from __future__ import annotations

import pytest
import torch

import blipkit
from tests.builders.configs import SAME_WIDTH
from tests.builders.inputs import sample_inputs
from tests.reference import save_reference


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    directory = tmp_path_factory.mktemp("itm")
    return save_reference("BlipForImageTextRetrieval", directory), directory


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vqa")
    return save_reference("BlipForQuestionAnswering", directory, **SAME_WIDTH), directory


@torch.no_grad()
def test_use_enc_token_feeds_enc_to_the_multimodal_encoder(retrieval):
    reference, directory = retrieval
    ours = blipkit.BlipForImageTextRetrieval.from_pretrained(directory, use_enc_token=True)
    inputs = sample_inputs()
    with_enc = dict(inputs, input_ids=inputs["input_ids"].clone())
    with_enc["input_ids"][:, 0] = 30523  # [ENC]
    torch.testing.assert_close(ours(**inputs).itm_score, reference(**with_enc).itm_score, atol=1e-5, rtol=1e-4)
    # ITC (use_itm_head=False) is unimodal: [CLS] in the original BLIP too, so nothing changes there.
    torch.testing.assert_close(
        ours(**inputs, use_itm_head=False).itm_score, reference(**inputs, use_itm_head=False).itm_score
    )
    assert not torch.allclose(ours(**inputs).itm_score, reference(**inputs).itm_score)
    assert torch.equal(inputs["input_ids"][:, 0], torch.tensor([101, 101]))  # the caller's ids are not modified


@torch.no_grad()
def test_use_enc_token_in_question_answering(vqa):
    reference, directory = vqa
    ours = blipkit.BlipForQuestionAnswering.from_pretrained(directory, use_enc_token=True)
    inputs = sample_inputs()
    with_enc = dict(inputs, input_ids=inputs["input_ids"].clone())
    with_enc["input_ids"][:, 0] = 30523
    labels = torch.tensor([[30522, 2048, 102], [30522, 2748, 102]])
    torch.testing.assert_close(ours(**inputs, labels=labels).loss, reference(**with_enc, labels=labels).loss)


@torch.no_grad()
def test_mask_question_padding_makes_answers_independent_of_the_batch(vqa):
    _, directory = vqa
    inputs = sample_inputs()  # question 0 is padded by one token
    labels = torch.tensor([[30522, 2048, 102], [30522, 2748, 102]])
    alone = {k: v[:1, :4] if k != "pixel_values" else v[:1] for k, v in inputs.items()}

    def answer_logits(model, batch, answer):
        _, question = model.encode_question(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
        out = model.text_decoder(
            input_ids=answer, encoder_hidden_states=question, encoder_attention_mask=batch["attention_mask"]
        )
        return out.logits[0]

    fixed = blipkit.BlipForQuestionAnswering.from_pretrained(directory, mask_question_padding=True)
    torch.testing.assert_close(answer_logits(fixed, inputs, labels), answer_logits(fixed, alone, labels[:1]))
    as_reference = blipkit.BlipForQuestionAnswering.from_pretrained(directory)
    assert not torch.allclose(
        answer_logits(as_reference, inputs, labels), answer_logits(as_reference, alone, labels[:1])
    )


@pytest.mark.parametrize("size", [(48, 48), (40, 56), (32, 32)])
@torch.no_grad()
def test_interpolate_pos_encoding_matches_reference(retrieval, size):
    reference, directory = retrieval
    ours = blipkit.BlipForImageTextRetrieval.from_pretrained(directory)
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    expected = reference.vision_model(pixel_values=pixels, interpolate_pos_encoding=True)
    actual = ours.vision_model(pixels, interpolate_pos_encoding=True)
    torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(actual.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-4)
