"""Our T5 (and T5 v1.1 / Flan-T5): an encoder-decoder with RMS norms, no biases, and relative position buckets
added to the attention scores instead of position embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from blipkit.checkpoint import KeyMap
from blipkit.configs import T5Config
from blipkit.generation import search
from blipkit.generation.cache import KVCache
from blipkit.generation.config import GenerationConfig
from blipkit.generation.mixin import GenerationMixin
from blipkit.generation.search import Generators
from blipkit.modeling.base import PreTrainedModel
from blipkit.modeling.layers import (
    Attention,
    CheckpointableLayer,
    Embedding,
    StepDecoder,
    activation,
    additive_mask,
    boolean_mask,
)
from blipkit.modeling.linear import Linear
from blipkit.modeling.outputs import Seq2SeqLMOutput


def _stack_keys(stack: str, parts: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """Block N's sub-layer i (attention or feed-forward) and its norm, for one stack."""
    keys = []
    for i, (ref, ours) in enumerate(parts):
        keys.append((f"{stack}.block.{{}}.layer.{i}.{ref}", f"{stack}.layers.{{}}.{ours}"))
        keys.append((f"{stack}.block.{{}}.layer.{i}.layer_norm", f"{stack}.layers.{{}}.{ours}_norm"))
    return keys


T5_KEYS = [
    # The reference keeps each stack's position-bias table in its first block; we keep it on the stack.
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias", "encoder.relative_attention_bias"),
    ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias", "decoder.relative_attention_bias"),
    ("encoder.final_layer_norm", "encoder.final_norm"),
    ("decoder.final_layer_norm", "decoder.final_norm"),
    *_stack_keys("encoder", (("SelfAttention", "self_attn"), ("DenseReluDense", "mlp"))),
    *_stack_keys(
        "decoder", (("SelfAttention", "self_attn"), ("EncDecAttention", "cross_attn"), ("DenseReluDense", "mlp"))
    ),
]


def relative_position_buckets(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket for each (key - query) distance: one bucket per distance up to half the buckets, then
    logarithmically wider ones up to ``max_distance``; a bidirectional stack gives keys ahead their own half."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # a causal stack never looks ahead
    exact = num_buckets // 2
    # log(0) below only happens where ``distance < exact`` picks the exact bucket instead.
    far = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)).long()
    return buckets + torch.where(distance < exact, distance, far.clamp(max=num_buckets - 1))


def _clamp_float16(x: torch.Tensor) -> torch.Tensor:
    """T5 activations overflow float16; keep them finite as the reference does."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(x.dtype).max - (1000 if torch.isinf(x).any() else 0)
    return x.clamp(-limit, limit)


class T5MLP(nn.Module):
    """``wo(act(wi(x)))``, or gated as in T5 v1.1: ``wo(act(wi_0(x)) * wi_1(x))``."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.gated = config.is_gated_act
        if self.gated:
            self.wi_0 = Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = Linear(config.d_model, config.d_ff, bias=False)
        self.wo = Linear(config.d_ff, config.d_model, bias=False)
        self.act = activation(config.dense_act_fn)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        # wo may be kept in float32 (its input then is too); an int8 wo takes the activations' dtype
        wo_dtype = self.wo.weight.dtype if self.wo.weight.is_floating_point() else h.dtype
        return self.wo(self.dropout(h).to(wo_dtype))


class T5Layer(CheckpointableLayer):
    """Pre-norm self-attention, cross-attention to the encoder (decoder layers only), feed-forward."""

    def __init__(self, config: T5Config, cross_attention: bool) -> None:
        super().__init__()

        def attention() -> Attention:
            # No 1/sqrt(d) scaling: T5 was trained with it folded into the weights.
            return Attention(
                config.d_model, config.num_heads, qkv_bias=False, out_bias=False, scale=1.0, head_dim=config.d_kv,
                dropout=config.dropout_rate,
            )  # fmt: skip

        def norm() -> nn.RMSNorm:
            return nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)

        self.self_attn, self.self_attn_norm = attention(), norm()
        if cross_attention:
            self.cross_attn, self.cross_attn_norm = attention(), norm()
        self.mlp, self.mlp_norm = T5MLP(config), norm()
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        h = self.self_attn_norm(x)
        kv = cache.update(*self.self_attn.project_kv(h)) if cache is not None else None
        x = _clamp_float16(x + self.dropout(self.self_attn(h, mask=mask, kv=kv)))
        if hasattr(self, "cross_attn"):
            h = self.cross_attn(self.cross_attn_norm(x), context, mask=context_mask, kv=context_kv)
            x = _clamp_float16(x + self.dropout(h))
        return _clamp_float16(x + self.dropout(self.mlp(self.mlp_norm(x))))


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, cross-attending to the encoder's output)."""

    def __init__(self, config: T5Config, decoder: bool) -> None:
        super().__init__()
        self.is_decoder = decoder
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.relative_attention_bias = Embedding(self.num_buckets, config.num_heads)
        count = config.num_decoder_layers if decoder else config.num_layers
        self.layers = nn.ModuleList(T5Layer(config, cross_attention=decoder) for _ in range(count))
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def position_bias(self, queries: int, keys: int, past: int = 0) -> torch.Tensor:
        """The learned bias of every (query, key) pair: (1, heads, queries, keys); queries start at ``past``."""
        device = self.relative_attention_bias.weight.device
        relative = (
            torch.arange(keys, device=device)[None, :] - torch.arange(past, past + queries, device=device)[:, None]
        )
        buckets = relative_position_buckets(relative, not self.is_decoder, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        context_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """``attention_mask`` (batch, past + new) covers cached tokens too; ``context_mask`` is additive."""
        past = caches[0].length if caches else 0
        queries = inputs_embeds.shape[1]
        bias = self.position_bias(queries, past + queries, past)
        allowed = boolean_mask(attention_mask, queries, causal=self.is_decoder, past=past)
        # Masked pairs get the dtype's minimum in place of their bias, as the reference's SDPA path does.
        mask = bias if allowed is None else torch.where(allowed, bias, torch.finfo(bias.dtype).min)
        x = self.dropout(inputs_embeds)
        for i, layer in enumerate(self.layers):
            x = layer(
                x, mask, context, context_mask,
                caches[i] if caches else None, context_kv[i] if context_kv else None,
            )  # fmt: skip
        return self.dropout(self.final_norm(x))


class T5ForConditionalGeneration(GenerationMixin, PreTrainedModel):
    """T5 with its LM head. The token embeddings are shared by both stacks; the head is tied to them unless the
    checkpoint carries its own (Flan-T5 does)."""

    config_class = T5Config
    key_map = KeyMap(T5_KEYS)
    decoder_part = ""
    # The reference's aliases of ``shared``, and a table old checkpoints carry that no layer reads.
    tied_suffixes = (
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "decoder.layers.0.cross_attn.relative_attention_bias.weight",
    )
    tied_unless_saved = {"lm_head.weight": "shared.weight"}

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.shared = Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, decoder=False)
        self.decoder = T5Stack(config, decoder=True)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        self.generation_config = GenerationConfig()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The encoder's last hidden states: (batch, tokens, d_model)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.shared(input_ids)
        return self.encoder(inputs_embeds, attention_mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.scale_decoder_outputs:
            hidden = hidden * self.config.d_model**-0.5
        return self.lm_head(hidden)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the decoder reads [start] + labels[:-1], with ignored (-100) labels as padding."""
        start = self._decoder_start_token_id()
        shifted = torch.cat([labels.new_full((labels.shape[0], 1), start), labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def _decoder_start_token_id(self) -> int:
        start = self.config.decoder_start_token_id
        if start is None:
            raise ValueError("the T5 config has no decoder_start_token_id (T5 starts decoding with pad_token_id: 0)")
        return start

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Seq2SeqLMOutput:
        """Logits for every decoder position; with ``labels`` (and no decoder input) also the loss of predicting
        them, the decoder reading the labels shifted right."""
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, inputs_embeds)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5 needs decoder_input_ids or labels to decode")
            decoder_input_ids = self.shift_right(labels)
        context_mask = additive_mask(attention_mask, 1, encoder_outputs.dtype)
        hidden = self.decoder(self.shared(decoder_input_ids), decoder_attention_mask, encoder_outputs, context_mask)
        logits = self.logits(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().to(logits.device))
        return Seq2SeqLMOutput(loss=loss, logits=logits, encoder_last_hidden_state=encoder_outputs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        generator: Generators = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Decoder ids, starting with ``decoder_start_token_id``, for each encoder input."""
        encoded = self.encode(input_ids, attention_mask, inputs_embeds)
        start = encoded.new_empty((encoded.shape[0], 0), dtype=torch.long)
        make_decoder = self.decoder_factory(encoded, attention_mask)
        return self._decode(make_decoder, start, None, self.special_tokens(), generate_kwargs, generator)

    def special_tokens(self) -> dict[str, int | list[int] | None]:
        """The tokens generation ends, pads and starts decoding with: the config's, over any generation config."""
        text = self.config
        return {
            "eos_token_id": text.eos_token_id,
            "pad_token_id": text.pad_token_id,
            "decoder_start_token_id": text.decoder_start_token_id,
        }

    def decoder_factory(self, encoded: torch.Tensor, attention_mask: torch.Tensor | None) -> search.DecoderFactory:
        """Step decoders over the encoder's output (batch, tokens, d_model) for generation."""
        context_mask = additive_mask(attention_mask, 1, encoded.dtype)

        def make_decoder(rows_per_prompt: int, max_length: int) -> CachedT5Decoder:
            return CachedT5Decoder(self, encoded, context_mask, encoded.shape[0] * rows_per_prompt, max_length)

        return make_decoder


class CachedT5Decoder(StepDecoder):
    """Runs T5's decoder one step at a time: self-attention caches, and the encoder output's keys and values
    projected once and shared by every row (beam, sample) decoding from it."""

    def __init__(
        self,
        model: T5ForConditionalGeneration,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        rows: int,
        max_length: int,
    ) -> None:
        super().__init__(model.decoder.layers, rows, max_length, context.dtype, context.device, context)
        self.model = model
        self.context_mask = context_mask

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Positions are implicit in T5: the relative bias counts from the cache length.
        decoder = self.model.decoder
        hidden = decoder(
            self.model.shared(input_ids), attention_mask, context_mask=self.context_mask, caches=self.caches,
            context_kv=self.context_kv,
        )  # fmt: skip
        return self.model.logits(hidden[:, -1])
