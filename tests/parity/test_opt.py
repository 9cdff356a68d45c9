"""Our OPT against the reference's: logits and loss, pre- and post-norm, projected embeddings, padding."""

from __future__ import annotations

import pytest
import torch

import blipkit
from tests.reference import perturb_

TINY_OPT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 37, "num_attention_heads": 4,
            "max_position_embeddings": 64, "dropout": 0.0}  # fmt: skip
VARIANTS = {
    "pre-norm": {},
    "post-norm (opt-350m)": {"do_layer_norm_before": False, "word_embed_proj_dim": 16},
    "no-bias gelu untied": {"enable_bias": False, "activation_function": "gelu", "tie_word_embeddings": False},
}


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_opt_logits_and_loss(tmp_path, variant):
    import transformers

    torch.manual_seed(0)
    config = transformers.OPTConfig(**TINY_OPT, **VARIANTS[variant])
    reference = perturb_(transformers.OPTForCausalLM(config)).eval()
    reference.save_pretrained(tmp_path)
    ours = blipkit.OPTForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([[2, 15, 27, 33, 8, 9], [1, 1, 2, 44, 12, 70]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # left padding, as generation pads
    labels = ids.masked_fill(mask == 0, -100)
    expected = reference(input_ids=ids, attention_mask=mask, labels=labels)
    actual = ours(input_ids=ids, attention_mask=mask, labels=labels)
    real = mask.bool()
    torch.testing.assert_close(actual.logits[real], expected.logits[real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, atol=1e-5, rtol=1e-4)
    embeds = ours.get_input_embeddings()(ids)
    torch.testing.assert_close(
        ours(inputs_embeds=embeds).logits, reference(inputs_embeds=embeds).logits, atol=1e-5, rtol=1e-4
    )
    ours.save_pretrained(tmp_path / "ours")
    again = transformers.OPTForCausalLM.from_pretrained(tmp_path / "ours").eval()
    torch.testing.assert_close(again(input_ids=ids).logits, reference(input_ids=ids).logits)
