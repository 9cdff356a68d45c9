"""Our T5 / Flan-T5 against the reference: alone and as BLIP-2's language model (forward, loss, generate)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import blipkit
from tests.builders.configs import EOS, FLAN, IMAGE_TOKEN, QUERIES, SAMPLING, TINY_T5
from tests.builders.inputs import blip2_inputs, encoder_inputs
from tests.builders.models import reference_blip2_t5, reference_t5
from tests.builders.tolerances import close


# Decoder depth differs from the encoder's in the first case (the reference can only generate when they agree).
@pytest.mark.parametrize(
    "variant", [{**FLAN, "num_decoder_layers": 3}, {"feed_forward_proj": "relu"}, {"d_kv": 5}], ids=str
)
@torch.no_grad()
def test_t5_logits_and_loss(tmp_path, variant):
    reference = reference_t5(tmp_path, **variant)
    ours = blipkit.T5ForConditionalGeneration.from_pretrained(tmp_path)
    labels = torch.tensor([[5, 9, 33, EOS, -100], [8, 2, 40, 41, EOS]])
    expected, actual = reference(**encoder_inputs(), labels=labels), ours(**encoder_inputs(), labels=labels)
    close(actual.logits, expected.logits)
    close(actual.loss, expected.loss)
    close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state)
    decoder_ids = torch.tensor([[0, 5, 9], [0, 8, 2]])
    close(
        ours(**encoder_inputs(), decoder_input_ids=decoder_ids).logits,
        reference(**encoder_inputs(), decoder_input_ids=decoder_ids).logits,
    )


@torch.no_grad()
def test_t5_cached_greedy_decoding_equals_full_forward_decoding(tmp_path):
    # A decoder deeper than the encoder: the reference cannot generate with it (its cache is sized for the encoder).
    reference_t5(tmp_path, **FLAN, num_decoder_layers=3)
    ours = blipkit.T5ForConditionalGeneration.from_pretrained(tmp_path)
    generated = ours.generate(**encoder_inputs(), max_new_tokens=6)
    ids = torch.zeros(2, 1, dtype=torch.long)
    for _ in range(6):
        ids = torch.cat(
            [ids, ours(**encoder_inputs(), decoder_input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1
        )
    assert generated.tolist() == ids.tolist()  # (no row reaches </s> within 6 tokens here)


T5_SETTINGS = [
    {"max_new_tokens": 8},
    {},
    {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 7},
    {"num_beams": 2, "max_new_tokens": 6, "length_penalty": 0.5, "early_stopping": True},
    {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2, "max_new_tokens": 8},
    {"min_new_tokens": 5, "max_new_tokens": 7},
]


@pytest.mark.parametrize("variant", [FLAN, {}], ids=["flan", "t5"])
def test_t5_generated_ids_match(tmp_path, variant):
    reference = reference_t5(tmp_path, **variant)
    ours = blipkit.T5ForConditionalGeneration.from_pretrained(tmp_path)
    finished_early = False
    for settings in T5_SETTINGS:
        expected = reference.generate(**encoder_inputs(), **settings)
        assert ours.generate(**encoder_inputs(), **settings).tolist() == expected.tolist(), settings
        finished_early |= bool((expected[:, :-1] == EOS).any())
    assert finished_early or variant != FLAN  # rows finish early (and get padded), not only at full length


@pytest.mark.parametrize("settings", SAMPLING, ids=str)
def test_t5_sampling_matches_under_the_same_seed(tmp_path, settings):
    reference = reference_t5(tmp_path, **FLAN)
    with torch.no_grad():  # Flan-T5's head is its own: make the end token likely there too
        reference.lm_head.weight[EOS] *= 3.0
    reference.save_pretrained(tmp_path)
    ours = blipkit.T5ForConditionalGeneration.from_pretrained(tmp_path)
    for seed in range(10):
        torch.manual_seed(seed)
        expected = reference.generate(**encoder_inputs(), max_new_tokens=6, **settings)
        torch.manual_seed(seed)
        assert ours.generate(**encoder_inputs(), max_new_tokens=6, **settings).tolist() == expected.tolist(), seed


@torch.no_grad()
def test_flan_t5_checkpoint_with_its_own_lm_head(tmp_path):
    """Flan-T5 checkpoints carry lm_head.weight (and older ones the embeddings under every alias) and say
    tie_word_embeddings=false: the head stays separate and the output is not rescaled."""
    import transformers

    reference_t5(tmp_path, **FLAN)
    weights = load_file(tmp_path / "model.safetensors")
    weights["lm_head.weight"] = torch.randn(99, 32, generator=torch.Generator().manual_seed(1))
    weights["encoder.embed_tokens.weight"] = weights["decoder.embed_tokens.weight"] = weights["shared.weight"]
    save_file({k: v.clone() for k, v in weights.items()}, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("scale_decoder_outputs")
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))

    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    ours = blipkit.T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert ours.lm_head.weight is not ours.shared.weight and not ours.config.scale_decoder_outputs
    close(ours.lm_head.weight, weights["lm_head.weight"])
    decoder_ids = torch.tensor([[0, 5, 9], [0, 8, 2]])
    close(
        ours(**encoder_inputs(), decoder_input_ids=decoder_ids).logits,
        reference(**encoder_inputs(), decoder_input_ids=decoder_ids).logits,
    )
    ours.save_pretrained(tmp_path / "ours")  # and it is written back, for the reference to read
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    close(again.lm_head.weight, weights["lm_head.weight"])


def test_t5_saved_by_blipkit_round_trips(tmp_path):
    import transformers

    reference = reference_t5(tmp_path / "ref", **FLAN)
    ours = blipkit.T5ForConditionalGeneration.from_pretrained(tmp_path / "ref")
    assert ours.lm_head.weight is ours.shared.weight  # the reference saved it tied
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        close(again(**encoder_inputs(), labels=torch.tensor([[5, 1], [6, 1]])).logits,
              reference(**encoder_inputs(), labels=torch.tensor([[5, 1], [6, 1]])).logits)  # fmt: skip


def test_t5_config_errors():
    with pytest.raises(blipkit.ConfigError, match="feed_forward_proj must be 'ACT' or 'gated-ACT'"):
        blipkit.T5Config(feed_forward_proj="gated-gelu-new")
    model = blipkit.T5ForConditionalGeneration(blipkit.T5Config.from_dict({**TINY_T5, "decoder_start_token_id": None}))
    with pytest.raises(ValueError, match="no decoder_start_token_id"):
        model(**encoder_inputs(), labels=torch.tensor([[5, 1], [6, 1]]))


# --- BLIP-2 with Flan-T5 -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blip2_t5(tmp_path_factory):
    directory = tmp_path_factory.mktemp("blip2_t5")
    reference = reference_blip2_t5(directory)
    return reference, blipkit.Blip2ForConditionalGeneration.from_pretrained(directory), directory


@torch.no_grad()
def test_blip2_t5_logits_and_loss(blip2_t5):
    reference, ours, _ = blip2_t5
    labels = torch.tensor([[5, 9, EOS], [8, EOS, -100]])
    expected, actual = reference(**blip2_inputs(), labels=labels), ours(**blip2_inputs(), labels=labels)
    close(actual.logits, expected.logits)
    close(actual.loss, expected.loss)
    decoder_ids = torch.tensor([[0, 5], [0, 8]])
    close(
        ours(**blip2_inputs(), decoder_input_ids=decoder_ids).logits,
        reference(**blip2_inputs(), decoder_input_ids=decoder_ids).logits,
    )


@pytest.mark.parametrize("settings", [T5_SETTINGS[0], T5_SETTINGS[2], T5_SETTINGS[4]], ids=str)
def test_blip2_t5_generated_ids_match(blip2_t5, settings):
    reference, ours, _ = blip2_t5
    assert (
        ours.generate(**blip2_inputs(), **settings).tolist()
        == reference.generate(**blip2_inputs(), **settings).tolist()
    )


def test_blip2_t5_without_a_prompt_reads_the_image_and_an_empty_text(blip2_t5):
    # The reference cannot: T5 has no bos token to start the prompt. An empty text tokenizes to </s>.
    _, ours, _ = blip2_t5
    pixels = blip2_inputs()["pixel_values"]
    empty = torch.tensor([[IMAGE_TOKEN] * QUERIES + [EOS]] * 2)
    assert ours.generate(pixels, max_new_tokens=5).tolist() == ours.generate(pixels, empty, max_new_tokens=5).tolist()


@torch.no_grad()
def test_blip2_t5_text_features_and_round_trip(blip2_t5, tmp_path):
    import transformers

    reference, ours, directory = blip2_t5
    text, mask = blip2_inputs()["input_ids"][:, QUERIES:], blip2_inputs()["attention_mask"][:, QUERIES:]
    reference_model = transformers.Blip2Model.from_pretrained(directory).eval()
    close(
        blipkit.Blip2Model.from_pretrained(directory).get_text_features(text, mask).last_hidden_state,
        reference_model.get_text_features(input_ids=text, attention_mask=mask).last_hidden_state,
    )
    ours.save_pretrained(tmp_path)
    again = transformers.Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    labels = torch.tensor([[5, EOS], [8, EOS]])
    close(again(**blip2_inputs(), labels=labels).logits, reference(**blip2_inputs(), labels=labels).logits)
