"""The BLIP-2 Q-Former: learned query tokens that read the image through cross-attention every few layers.

Query tokens and (optional) text tokens share self-attention; only the queries cross-attend to the image, and each
part has its own feed-forward block.
"""

from __future__ import annotations

import torch
from torch import nn

from blipkit.checkpoint import KeyMap
from blipkit.configs import Blip2QFormerConfig
from blipkit.modeling.base import PreTrainedModel
from blipkit.modeling.layers import MLP, Attention, CheckpointableLayer, Embedding, additive_mask, check_text_length
from blipkit.modeling.outputs import BaseModelOutputWithPoolingAndCrossAttentions

QFORMER_KEYS = [
    ("layernorm", "norm"),
    *(
        (f"encoder.layer.{{}}.{ref}.attention.{proj}", f"layers.{{}}.{ours}.{short}")
        for ref, ours in (("attention", "self_attn"), ("crossattention", "cross_attn"))
        for proj, short in (("query", "q"), ("key", "k"), ("value", "v"))
    ),
    ("encoder.layer.{}.attention.output.dense", "layers.{}.self_attn.o"),
    ("encoder.layer.{}.attention.output.LayerNorm", "layers.{}.self_attn_norm"),
    ("encoder.layer.{}.crossattention.output.dense", "layers.{}.cross_attn.o"),
    ("encoder.layer.{}.crossattention.output.LayerNorm", "layers.{}.cross_attn_norm"),
    ("encoder.layer.{}.intermediate_query.dense", "layers.{}.query_mlp.fc1"),
    ("encoder.layer.{}.output_query.dense", "layers.{}.query_mlp.fc2"),
    ("encoder.layer.{}.output_query.LayerNorm", "layers.{}.query_mlp_norm"),
    ("encoder.layer.{}.intermediate.dense", "layers.{}.text_mlp.fc1"),
    ("encoder.layer.{}.output.dense", "layers.{}.text_mlp.fc2"),
    ("encoder.layer.{}.output.LayerNorm", "layers.{}.text_mlp_norm"),
]


class QFormerLayer(CheckpointableLayer):
    def __init__(self, config: Blip2QFormerConfig, index: int) -> None:
        super().__init__()
        dim, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
        drop = config.attention_probs_dropout_prob
        self.self_attn = Attention(dim, heads, dropout=drop)
        self.self_attn_norm = nn.LayerNorm(dim, eps=eps)
        self.has_cross_attention = index % config.cross_attention_frequency == 0
        if self.has_cross_attention:
            self.cross_attn = Attention(dim, heads, kv_dim=config.encoder_hidden_size, dropout=drop)
            self.cross_attn_norm = nn.LayerNorm(dim, eps=eps)
        self.query_mlp = MLP(dim, config.intermediate_size, config.hidden_act)
        self.query_mlp_norm = nn.LayerNorm(dim, eps=eps)
        if config.use_qformer_text_input:
            self.text_mlp = MLP(dim, config.intermediate_size, config.hidden_act)
            self.text_mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _feed_forward(self, x: torch.Tensor, part: str) -> torch.Tensor:
        if not hasattr(self, f"{part}_mlp"):
            raise ValueError("this Q-Former has no text feed-forward: its config says use_qformer_text_input=False")
        return getattr(self, f"{part}_mlp_norm")(x + self.dropout(getattr(self, f"{part}_mlp")(x)))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        image: torch.Tensor | None,
        image_mask: torch.Tensor | None,
        query_length: int,
    ) -> torch.Tensor:
        x = self.self_attn_norm(x + self.dropout(self.self_attn(x, mask=mask)))
        if query_length == 0:
            return self._feed_forward(x, "text")
        queries = x[:, :query_length]
        if self.has_cross_attention:
            if image is None:
                raise ValueError("encoder_hidden_states must be given for cross-attention layers")
            queries = self.cross_attn_norm(queries + self.dropout(self.cross_attn(queries, image, mask=image_mask)))
        out = self._feed_forward(queries, "query")
        if x.shape[1] > query_length:
            out = torch.cat([out, self._feed_forward(x[:, query_length:], "text")], dim=1)
        return out


class QFormerTextEmbeddings(nn.Module):
    """Word + position embeddings of text for the Q-Former, after the query tokens (the Q-Former normalizes them)."""

    def __init__(self, config: Blip2QFormerConfig) -> None:
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor, query_embeds: torch.Tensor | None = None) -> torch.Tensor:
        check_text_length(input_ids.shape[1], self.position_embeddings.num_embeddings)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return x if query_embeds is None else torch.cat([query_embeds.to(x.dtype), x], dim=1)


class Blip2QFormerModel(PreTrainedModel):
    """The Q-Former on its own: ``query_embeds`` (queries, optionally followed by embedded text) in, tokens out."""

    config_class = Blip2QFormerConfig
    key_map = KeyMap(QFORMER_KEYS)

    def __init__(self, config: Blip2QFormerConfig) -> None:
        super().__init__(config)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(QFormerLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(
        self,
        query_embeds: torch.Tensor,
        query_length: int | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        query_length = query_embeds.shape[1] if query_length is None else query_length
        dtype = self.norm.weight.dtype  # the reference keeps the Q-Former in its own dtype
        x = self.dropout(self.norm(query_embeds.to(dtype)))
        mask = additive_mask(attention_mask, x.shape[1], dtype)
        image = encoder_hidden_states.to(dtype) if encoder_hidden_states is not None else None
        image_mask = additive_mask(encoder_attention_mask, 1, dtype) if encoder_attention_mask is not None else None
        for layer in self.layers:
            x = layer(x, mask, image, image_mask, query_length)
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=x, pooler_output=x[:, 0])
