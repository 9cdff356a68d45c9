"""Limits on what one input may cost: generation lengths, downloaded images, pixel values, huge JPEGs."""

from __future__ import annotations

import pytest
import torch

import blipkit
from blipkit.generation.cache import KVCache
from tests.reference import perturb_

# --- generation: caches and beams grow with what is generated, not with max_new_tokens ----------------------------

EOS = 1
TINY_T5 = {"model_type": "t5", "vocab_size": 99, "d_model": 32, "d_kv": 6, "d_ff": 37, "num_layers": 2,
           "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
           "dropout_rate": 0.0, "decoder_start_token_id": 0, "feed_forward_proj": "gated-gelu",
           "tie_word_embeddings": False}  # fmt: skip
# More than any machine's memory: a buffer sized for it up front fails at once (too big to allocate at all).
UNREACHABLE = 10**12


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """A tiny reference Flan-T5 whose end token is likely (rows finish within a few steps), and ours from it."""
    import transformers

    directory = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    reference = perturb_(transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY_T5)))
    with torch.no_grad():
        reference.shared.weight[EOS] *= 6.0
    reference.eval().save_pretrained(directory)
    return reference, blipkit.T5ForConditionalGeneration.from_pretrained(directory)


def t5_inputs():
    ids = torch.randint(2, 99, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def cache_capacities(monkeypatch):
    """The length every KV cache buffer had after each update."""
    seen = []
    update = KVCache.update

    def spy(self, keys, values):
        result = update(self, keys, values)
        seen.append(self.keys.shape[2])
        return result

    monkeypatch.setattr(KVCache, "update", spy)
    return seen


@pytest.mark.parametrize("settings", [{}, {"num_beams": 3, "num_return_sequences": 2}], ids=["greedy", "beams"])
def test_t5_generation_with_an_unreachable_max_new_tokens_allocates_what_it_generates(t5, cache_capacities, settings):
    reference, ours = t5
    # No token twice (the start token, pad, included): every row must end within the 97 others, and ends sooner.
    settings = {**settings, "no_repeat_ngram_size": 1}
    expected = reference.generate(**t5_inputs(), **settings, max_new_tokens=40)
    assert (expected == EOS).any(-1).all()  # every row ends within 40 tokens: the limit changes nothing
    generated = ours.generate(**t5_inputs(), **settings, max_new_tokens=UNREACHABLE)
    assert generated.tolist() == expected.tolist()
    assert max(cache_capacities) <= 1 + 64  # the start token and the first chunk


@pytest.mark.parametrize("settings", [{}, {"num_beams": 2}], ids=["greedy", "beams"])
def test_t5_generation_past_the_first_chunk_grows_and_matches_the_reference(t5, cache_capacities, settings):
    reference, ours = t5
    long = {**settings, "min_new_tokens": 150, "max_new_tokens": 150}  # the end token is barred until 150
    expected = reference.generate(**t5_inputs(), **long)
    assert ours.generate(**t5_inputs(), **long).tolist() == expected.tolist()
    assert sorted(set(cache_capacities)) == [65, 130, 151]  # doubled, then capped by max_length
