"""The BLIP text model: a post-norm BERT whose layers can cross-attend to image (or question) tokens."""

from __future__ import annotations

import torch
from torch import nn

from blipkit.checkpoint import KeyMap
from blipkit.configs import BlipTextConfig
from blipkit.generation import search
from blipkit.generation.cache import KVCache
from blipkit.modeling.base import PreTrainedModel
from blipkit.modeling.layers import (
    MLP,
    Attention,
    CheckpointableLayer,
    Embedding,
    StepDecoder,
    activation,
    additive_mask,
    check_text_length,
    lm_loss,
)
from blipkit.modeling.linear import Linear, linear
from blipkit.modeling.outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
)

TEXT_KEYS = [
    ("embeddings.LayerNorm", "embeddings.norm"),
    ("encoder.layer.{}.attention.self.query", "layers.{}.self_attn.q"),
    ("encoder.layer.{}.attention.self.key", "layers.{}.self_attn.k"),
    ("encoder.layer.{}.attention.self.value", "layers.{}.self_attn.v"),
    ("encoder.layer.{}.attention.output.dense", "layers.{}.self_attn.o"),
    ("encoder.layer.{}.attention.output.LayerNorm", "layers.{}.self_attn_norm"),
    ("encoder.layer.{}.crossattention.self.query", "layers.{}.cross_attn.q"),
    ("encoder.layer.{}.crossattention.self.key", "layers.{}.cross_attn.k"),
    ("encoder.layer.{}.crossattention.self.value", "layers.{}.cross_attn.v"),
    ("encoder.layer.{}.crossattention.output.dense", "layers.{}.cross_attn.o"),
    ("encoder.layer.{}.crossattention.output.LayerNorm", "layers.{}.cross_attn_norm"),
    ("encoder.layer.{}.intermediate.dense", "layers.{}.mlp.fc1"),
    ("encoder.layer.{}.output.dense", "layers.{}.mlp.fc2"),
    ("encoder.layer.{}.output.LayerNorm", "layers.{}.mlp_norm"),
    ("pooler.dense", "pooler"),
    ("cls.predictions.transform.dense", "head.dense"),
    ("cls.predictions.transform.LayerNorm", "head.norm"),
    ("cls.predictions", "head"),
]


class TextEmbeddings(nn.Module):
    def __init__(self, config: BlipTextConfig) -> None:
        super().__init__()
        # The [PAD] row gets no gradient from the lookup, as in the reference (it still does from a tied LM head).
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past: int = 0,
    ) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        length, limit = x.shape[1], self.position_embeddings.num_embeddings
        if position_ids is None:
            check_text_length(past + length, limit)
            position_ids = torch.arange(past, past + length, device=x.device)
        return self.dropout(self.norm(x + self.position_embeddings(position_ids)))


class TextLayer(CheckpointableLayer):
    """Self-attention, optional cross-attention, feed-forward; each followed by add & LayerNorm."""

    def __init__(self, config: BlipTextConfig) -> None:
        super().__init__()
        dim, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
        drop = config.attention_probs_dropout_prob
        self.self_attn = Attention(dim, heads, dropout=drop)
        self.self_attn_norm = nn.LayerNorm(dim, eps=eps)
        # The reference builds cross-attention whenever the config says is_decoder (all released checkpoints).
        if config.is_decoder:
            self.cross_attn = Attention(dim, heads, kv_dim=config.encoder_hidden_size, dropout=drop)
            self.cross_attn_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, config.intermediate_size, config.hidden_act)
        self.mlp_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``cache`` holds this layer's earlier keys/values (generation); ``context_kv`` the context's, precomputed."""
        kv = cache.update(*self.self_attn.project_kv(x)) if cache is not None else None
        x = self.self_attn_norm(x + self.dropout(self.self_attn(x, mask=mask, kv=kv)))
        if context is not None or context_kv is not None:
            if not hasattr(self, "cross_attn"):
                raise ValueError("this text model has no cross-attention (is_decoder=False in its config)")
            attended = self.cross_attn(x, context, mask=context_mask, kv=context_kv)
            x = self.cross_attn_norm(x + self.dropout(attended))
        return self.mlp_norm(x + self.dropout(self.mlp(x)))


class BlipTextModel(PreTrainedModel):
    """BERT encoder (bidirectional) or decoder (``is_decoder=True``: causal), cross-attending to
    ``encoder_hidden_states`` when given."""

    config_class = BlipTextConfig
    key_map = KeyMap(TEXT_KEYS)

    def __init__(
        self, config: BlipTextConfig, add_pooling_layer: bool = True, mask_cross_attention: bool = False
    ) -> None:
        super().__init__(config)
        # The reference (transformers 5.x) never applies encoder_attention_mask in cross-attention, so padded
        # encoder tokens are attended to. We match that by default; mask_cross_attention=True applies the mask.
        self.mask_cross_attention = mask_cross_attention
        self.embeddings = TextEmbeddings(config)
        self.layers = nn.ModuleList(TextLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        is_decoder: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is not None:
            check_token_ids(input_ids, self.config.vocab_size)
        elif inputs_embeds is None and encoder_embeds is None:
            raise ValueError("You have to specify input_ids, inputs_embeds or encoder_embeds")
        x = encoder_embeds if encoder_embeds is not None else self.embeddings(input_ids, position_ids, inputs_embeds)
        check_mask(attention_mask, x.shape[:2], "attention_mask")
        mask = additive_mask(attention_mask, x.shape[1], x.dtype, causal=is_decoder)
        context_mask = None
        if encoder_hidden_states is not None:
            check_mask(encoder_attention_mask, encoder_hidden_states.shape[:2], "encoder_attention_mask")
            if self.mask_cross_attention:
                context_mask = additive_mask(encoder_attention_mask, 1, x.dtype)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, mask, encoder_hidden_states, context_mask)
            if hidden_states is not None:
                hidden_states.append(x)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )


class LMHead(nn.Module):
    """Dense + activation + LayerNorm, then the vocabulary projection (tied to the word embeddings by default)."""

    def __init__(self, config: BlipTextConfig, tied: bool) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Tied (every released checkpoint): the projection is the word embeddings plus this bias. Untied: the
        # reference projects with its own decoder weight and bias, and keeps (and saves) this bias unused.
        self.bias = nn.Parameter(torch.empty(config.vocab_size))
        self.decoder = None if tied else Linear(config.hidden_size, config.vocab_size)

    @property
    def tied_suffixes(self) -> tuple[str, ...]:
        # When tied, the reference keeps decoder.weight and decoder.bias as aliases; it does not save them.
        return () if self.decoder is not None else ("decoder.weight", "decoder.bias")

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.dense(x)))
        if self.decoder is not None:
            return self.decoder(x)
        return linear(x, word_embeddings, self.bias)


class BlipTextLMHeadModel(PreTrainedModel):
    """The BLIP text decoder: ``BlipTextModel`` (no pooler) + LM head, with a label-smoothed LM loss."""

    config_class = BlipTextConfig
    key_map = KeyMap(TEXT_KEYS)
    decoder_part = ""

    def __init__(
        self, config: BlipTextConfig, tie_word_embeddings: bool = False, mask_cross_attention: bool = False
    ) -> None:
        super().__init__(config)
        # Inside a BlipConfig model the reference ties unless both its flag and the text config's say not to.
        tied = config.tie_word_embeddings or bool(tie_word_embeddings)
        self.bert = BlipTextModel(config, add_pooling_layer=False, mask_cross_attention=mask_cross_attention)
        self.head = LMHead(config, tied)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_logits: bool = False,
        is_decoder: bool = True,
        reduction: str = "mean",
        logits_to_keep: int = 0,
        output_hidden_states: bool = False,
    ) -> CausalLMOutputWithCrossAttentions | torch.Tensor:
        out = self.bert(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            is_decoder=is_decoder,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.head(hidden, self.bert.embeddings.word_embeddings.weight)
        if return_logits:
            return logits[:, :-1].contiguous()
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels, self.config.label_smoothing, reduction)
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits, hidden_states=out.hidden_states)

    def special_tokens(self) -> dict[str, int | None]:
        """As the reference: [SEP] ends a caption or answer and [PAD] fills finished rows, whatever a generation
        config says."""
        return {"eos_token_id": self.config.sep_token_id, "pad_token_id": self.config.pad_token_id}

    def decoder_factory(self, context: torch.Tensor, context_mask: torch.Tensor | None) -> search.DecoderFactory:
        """Step decoders that cross-attend to ``context`` (batch, tokens, width): image tokens, or a question."""

        def make_decoder(rows_per_context: int, max_length: int) -> CachedTextDecoder:
            return CachedTextDecoder(self, context, context_mask, context.shape[0] * rows_per_context, max_length)

        return make_decoder


class CachedTextDecoder(StepDecoder):
    """Runs a ``BlipTextLMHeadModel`` one step at a time for generation.

    Self-attention keys/values go to preallocated caches; cross-attention keys/values over the context (image or
    question tokens) are projected once, at construction, and shared by every row that decodes from that context
    (beams, samples) without being copied.
    """

    def __init__(
        self,
        model: BlipTextLMHeadModel,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        rows: int,
        max_length: int,
    ) -> None:
        super().__init__(model.bert.layers, rows, max_length, context.dtype, context.device, context)
        self.model = model
        self.context_mask = None
        if model.bert.mask_cross_attention and context_mask is not None:
            self.context_mask = additive_mask(context_mask, 1, context.dtype)

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        past = self.caches[0].length
        x = self.model.bert.embeddings(input_ids, position_ids)
        mask = additive_mask(attention_mask, input_ids.shape[1], x.dtype, causal=True, past=past)
        for layer, cache, context_kv in zip(self.model.bert.layers, self.caches, self.context_kv, strict=True):
            x = layer(x, mask, context_mask=self.context_mask, cache=cache, context_kv=context_kv)
        return self.model.head(x[:, -1], self.model.bert.embeddings.word_embeddings.weight)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"input_ids must be an integer torch.Tensor, got {getattr(input_ids, 'dtype', type(input_ids))}"
        )
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, tokens), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: there must be at least one token")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(
            f"input_ids hold ids outside the vocabulary [0, {vocab_size}): min {int(input_ids.min())}, "
            f"max {int(input_ids.max())}"
        )


def check_mask(mask: torch.Tensor | None, shape: torch.Size, name: str) -> None:
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
