"""Our OPT decoder: pre- (or post-) norm transformer layers, learned positions offset by 2, tied LM head."""

from __future__ import annotations

import torch
from torch import nn

from blipkit.checkpoint import KeyMap
from blipkit.configs import OPTConfig
from blipkit.generation import search
from blipkit.generation.cache import KVCache
from blipkit.modeling.base import PreTrainedModel
from blipkit.modeling.layers import (
    MLP,
    Attention,
    CheckpointableLayer,
    Embedding,
    StepDecoder,
    boolean_mask,
    check_text_length,
    lm_loss,
)
from blipkit.modeling.linear import Linear, linear
from blipkit.modeling.outputs import CausalLMOutputWithCrossAttentions

OPT_KEYS = [
    *(
        (f"model.decoder.layers.{{}}.self_attn.{ref}", f"decoder.layers.{{}}.self_attn.{ours}")
        for ref, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("out_proj", "o"))
    ),
    ("model.decoder.layers.{}.fc1", "decoder.layers.{}.mlp.fc1"),
    ("model.decoder.layers.{}.fc2", "decoder.layers.{}.mlp.fc2"),
    ("model.decoder.layers.{}.self_attn_layer_norm", "decoder.layers.{}.self_attn_norm"),
    ("model.decoder.layers.{}.final_layer_norm", "decoder.layers.{}.mlp_norm"),
    ("model.decoder.final_layer_norm", "decoder.final_norm"),
    ("model.decoder", "decoder"),
]
POSITION_OFFSET = 2  # OPT's position table keeps two unused rows in front (a fairseq legacy)


class OPTLayer(CheckpointableLayer):
    def __init__(self, config: OPTConfig) -> None:
        super().__init__()
        dim, affine = config.hidden_size, config.layer_norm_elementwise_affine
        self.pre_norm = config.do_layer_norm_before
        bias = config.enable_bias
        self.self_attn = Attention(
            dim, config.num_attention_heads, qkv_bias=bias, out_bias=bias, dropout=config.attention_dropout
        )
        self.self_attn_norm = nn.LayerNorm(dim, elementwise_affine=affine)
        self.mlp = MLP(dim, config.ffn_dim, config.activation_function, bias=config.enable_bias)
        self.mlp_norm = nn.LayerNorm(dim, elementwise_affine=affine)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None) -> torch.Tensor:
        h = self.self_attn_norm(x) if self.pre_norm else x
        kv = cache.update(*self.self_attn.project_kv(h)) if cache is not None else None
        x = x + self.dropout(self.self_attn(h, mask=mask, kv=kv))
        if not self.pre_norm:
            x = self.self_attn_norm(x)
        h = self.mlp_norm(x) if self.pre_norm else x
        x = x + self.dropout(self.mlp(h))
        return x if self.pre_norm else self.mlp_norm(x)


class OPTDecoder(nn.Module):
    def __init__(self, config: OPTConfig) -> None:
        super().__init__()
        dim, proj = config.hidden_size, config.word_embed_proj_dim
        # The padding row gets no gradient from the lookup, as in the reference (it still does from the tied head).
        self.embed_tokens = Embedding(config.vocab_size, proj, padding_idx=config.pad_token_id)
        self.embed_positions = Embedding(config.max_position_embeddings + POSITION_OFFSET, dim)
        # OPT-350m embeds in a narrower space and projects in and out of the model width.
        self.project_in = Linear(proj, dim, bias=False) if proj != dim else None
        self.project_out = Linear(dim, proj, bias=False) if proj != dim else None
        has_final_norm = config.do_layer_norm_before and not config._remove_final_layer_norm
        self.final_norm = (
            nn.LayerNorm(dim, elementwise_affine=config.layer_norm_elementwise_affine) if has_final_norm else None
        )
        self.layers = nn.ModuleList(OPTLayer(config) for _ in range(config.num_hidden_layers))
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """``attention_mask`` (batch, past + new) covers cached tokens too; ``position_ids`` the new ones."""
        past = caches[0].length if caches else 0
        if not caches:  # generation checks its whole length up front; a single forward is checked here
            check_text_length(attention_mask.shape[1], self.embed_positions.num_embeddings - POSITION_OFFSET)
        x = inputs_embeds if self.project_in is None else self.project_in(inputs_embeds)
        x = x + self.embed_positions(position_ids + POSITION_OFFSET)
        # Boolean, as the reference's SDPA path: a fully masked (left-padding) row attends to nothing.
        mask = boolean_mask(attention_mask, x.shape[1], causal=True, past=past)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, caches[i] if caches else None)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x if self.project_out is None else self.project_out(x)


def opt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """OPT's positions: counted over real tokens, -1 for padding (row 1 of the table after the offset)."""
    return (attention_mask.long().cumsum(1) * attention_mask - 1).long()


class OPTForCausalLM(PreTrainedModel):
    """OPT with its language-model head (the word embeddings, unless the config unties them)."""

    config_class = OPTConfig
    key_map = KeyMap(OPT_KEYS)
    decoder_part = ""

    def __init__(self, config: OPTConfig) -> None:
        super().__init__(config)
        self.decoder = OPTDecoder(config)
        self.lm_head = (
            None if config.tie_word_embeddings else Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)
        )

    @property
    def tied_suffixes(self) -> tuple[str, ...]:
        return ("lm_head.weight",) if self.lm_head is None else ()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return linear(hidden, self.decoder.embed_tokens.weight)

    def special_tokens(self) -> dict[str, int | list[int] | None]:
        """The tokens generation starts, ends and pads with: the config's, over any generation config."""
        text = self.config
        return {"bos_token_id": text.bos_token_id, "eos_token_id": text.eos_token_id, "pad_token_id": text.pad_token_id}

    def decoder_factory(self, prompt_embeds: torch.Tensor) -> search.DecoderFactory:
        """Step decoders for generation from the prompt's embeddings, (batch, prompt, width): BLIP-2 writes its image
        features into them."""

        def make_decoder(rows_per_prompt: int, max_length: int) -> CachedOPTDecoder:
            embeds = prompt_embeds.repeat_interleave(rows_per_prompt, 0)
            return CachedOPTDecoder(self, embeds, max_length)

        return make_decoder

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutputWithCrossAttentions:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.decoder.embed_tokens(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if position_ids is None:
            position_ids = opt_positions(attention_mask)
        hidden = self.decoder(inputs_embeds, attention_mask, position_ids)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.logits(hidden)
        loss = None
        if labels is not None:
            loss = lm_loss(logits.float(), labels, label_smoothing=0.0)
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits)


class CachedOPTDecoder(StepDecoder):
    """Runs ``OPTForCausalLM`` one step at a time for generation, its prompt given as embeddings (BLIP-2's image
    prefix and prompt) rather than token ids."""

    def __init__(self, model: OPTForCausalLM, prompt_embeds: torch.Tensor, max_length: int) -> None:
        weight = model.decoder.embed_tokens.weight
        super().__init__(model.decoder.layers, prompt_embeds.shape[0], max_length, weight.dtype, weight.device)
        self.model = model
        self.prompt_embeds = prompt_embeds  # (rows, prompt, width): what the prompt's ids stand for

    def prefill(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self._next_logits(self.prompt_embeds, position_ids, attention_mask)

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._next_logits(self.model.decoder.embed_tokens(input_ids), position_ids, attention_mask)

    def _next_logits(self, embeds: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.decoder(embeds, mask, position_ids, self.caches)
        return self.model.logits(hidden[:, -1])
