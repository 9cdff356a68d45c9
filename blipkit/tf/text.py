"""BLIP's text model in Keras: a post-norm BERT whose layers can cross-attend to image (or question) tokens, its LM
head, and the cached decode step generation runs."""

from __future__ import annotations

from keras import ops

from blipkit.configs import BlipTextConfig
from blipkit.tf.layers import (
    Dense,
    Embedding,
    LayerNorm,
    Part,
    activation,
    additive_mask,
    attend,
    merge_heads,
    padding_and_causal_mask,
    split_heads,
)


class TextAttention(Part):
    """Attention with the reference's add & LayerNorm after it (``attention.self.*``, ``attention.output.*``)."""

    def __init__(self, dim: int, heads: int, kv_dim: int, eps: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.heads = heads
        self.query = self.part("self.query", Dense(dim, dim))
        self.key = self.part("self.key", Dense(kv_dim, dim))
        self.value = self.part("self.value", Dense(kv_dim, dim))
        self.dense = self.part("output.dense", Dense(dim, dim))
        self.norm = self.part("output.LayerNorm", LayerNorm(dim, eps))

    def project_kv(self, source):
        """Keys and values over ``source``: two (batch, heads, tokens, head_dim) tensors."""
        return split_heads(self.key(source), self.heads), split_heads(self.value(source), self.heads)

    def call(self, x, keys, values, bias=None):
        out = attend(split_heads(self.query(x), self.heads), keys, values, bias)
        return self.norm(x + self.dense(merge_heads(out)))


class TextLayer(Part):
    def __init__(self, config: BlipTextConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        dim, heads, eps = config.hidden_size, config.num_attention_heads, config.layer_norm_eps
        self.attention = self.part("attention", TextAttention(dim, heads, dim, eps))
        # The reference builds cross-attention whenever the config says is_decoder (all released checkpoints).
        self.crossattention = None
        if config.is_decoder:
            self.crossattention = self.part(
                "crossattention", TextAttention(dim, heads, config.encoder_hidden_size, eps)
            )
        self.intermediate = self.part("intermediate.dense", Dense(dim, config.intermediate_size))
        self.output_dense = self.part("output.dense", Dense(config.intermediate_size, dim))
        self.output_norm = self.part("output.LayerNorm", LayerNorm(dim, eps))
        self.act = activation(config.hidden_act)

    def call(self, x, bias=None, context=None, context_kv=None, cache=None, start=None):
        """``cache``: this layer's (keys, values) buffers of fixed length, written from position ``start`` (then the
        updated buffers are returned beside the output); ``context_kv``: the context's keys and values, projected
        once for many steps."""
        keys, values = self.attention.project_kv(x)
        if cache is not None:
            keys = ops.slice_update(cache[0], (0, 0, start, 0), keys)
            values = ops.slice_update(cache[1], (0, 0, start, 0), values)
        x = self.attention(x, keys, values, bias)
        if context is not None or context_kv is not None:
            if self.crossattention is None:
                raise ValueError("this text model has no cross-attention (is_decoder=False in its config)")
            # The reference never masks the context (encoder_attention_mask is accepted and not applied).
            x = self.crossattention(x, *(context_kv or self.crossattention.project_kv(context)))
        x = self.output_norm(x + self.output_dense(self.act(self.intermediate(x))))
        return x if cache is None else (x, (keys, values))


class TextEmbeddings(Part):
    def __init__(self, config: BlipTextConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.word_embeddings = self.part("word_embeddings", Embedding(config.vocab_size, config.hidden_size))
        self.position_embeddings = self.part(
            "position_embeddings", Embedding(config.max_position_embeddings, config.hidden_size)
        )
        self.norm = self.part("LayerNorm", LayerNorm(config.hidden_size, config.layer_norm_eps))

    def call(self, input_ids=None, position_ids=None, inputs_embeds=None):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            length, limit = x.shape[1], self.position_embeddings.table.shape[0]
            if length is not None and length > limit:
                raise ValueError(f"the text is {length} tokens long but the model has {limit} positions")
            position_ids = ops.arange(ops.shape(x)[1])[None, :]  # the length may be known only at run time
        return self.norm(x + self.position_embeddings(position_ids))


class TextEncoder(Part):
    """The BERT body: what a BLIP model holds as ``text_encoder`` / ``text_model``, and an LM head model as
    ``bert``."""

    def __init__(self, config: BlipTextConfig, add_pooling_layer: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = self.part("embeddings", TextEmbeddings(config))
        self.text_layers = [self.part(f"encoder.layer.{i}", TextLayer(config)) for i in range(config.num_hidden_layers)]
        self.pooler = None
        if add_pooling_layer:
            self.pooler = self.part("pooler.dense", Dense(config.hidden_size, config.hidden_size))

    def call(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        inputs_embeds=None,
        encoder_embeds=None,
        encoder_hidden_states=None,
        is_decoder: bool = False,
        output_hidden_states: bool = False,
    ):
        from blipkit.modeling.outputs import BaseModelOutputWithPoolingAndCrossAttentions

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
        if input_ids is None and inputs_embeds is None and encoder_embeds is None:
            raise ValueError("You have to specify input_ids, inputs_embeds or encoder_embeds")
        x = encoder_embeds
        if x is None:
            x = self.embeddings(input_ids, position_ids, inputs_embeds)
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"attention_mask must have shape {tuple(x.shape[:2])}, got {tuple(attention_mask.shape)}")
        bias = padding_and_causal_mask(attention_mask, x.shape[1], causal=is_decoder)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.text_layers:
            x = layer(x, bias, encoder_hidden_states)
            if hidden_states is not None:
                hidden_states.append(x)
        pooled = ops.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )

    def decode(self, input_ids, position_ids, key_mask, start, caches, context_kv):
        """Run ``input_ids`` (rows, n) at cache positions ``start`` .. ``start + n - 1`` of fixed-length caches.

        ``key_mask`` (rows, cache length) is True for the positions that hold real tokens once these are written.
        Returns the last hidden states (rows, n, width) and the updated caches."""
        n, length = input_ids.shape[1], key_mask.shape[1]
        causal = ops.arange(length)[None, :] <= (start + ops.arange(n))[:, None]
        bias = additive_mask(ops.logical_and(key_mask[:, None, None, :], causal[None, None]))
        x = self.embeddings(input_ids, position_ids)
        updated = []
        for layer, cache, kv in zip(self.text_layers, caches, context_kv, strict=True):
            x, cache = layer(x, bias, context_kv=kv, cache=cache, start=start)
            updated.append(cache)
        return x, updated


class LMHead(Part):
    """``cls.predictions``: dense + activation + LayerNorm, then the vocabulary projection, tied to the word
    embeddings (every released checkpoint) or its own ``decoder``."""

    def __init__(self, config: BlipTextConfig, tied: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dense = self.part("transform.dense", Dense(config.hidden_size, config.hidden_size))
        self.norm = self.part("transform.LayerNorm", LayerNorm(config.hidden_size, config.layer_norm_eps))
        self.act = activation(config.hidden_act)
        self.bias = self.param("bias", (config.vocab_size,))
        self.decoder = None if tied else self.part("decoder", Dense(config.hidden_size, config.vocab_size))

    def call(self, x, word_embeddings):
        x = self.norm(self.act(self.dense(x)))
        if self.decoder is not None:
            return self.decoder(x)
        return ops.matmul(x, ops.transpose(word_embeddings)) + self.bias


class TextDecoder(Part):
    """``bert`` + ``cls``: what BLIP's generating models hold as ``text_decoder``."""

    def __init__(self, config: BlipTextConfig, tied: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.bert = self.part("bert", TextEncoder(config, add_pooling_layer=False))
        self.head = self.part("cls.predictions", LMHead(config, tied))

    def logits(self, hidden):
        return self.head(hidden, self.bert.embeddings.word_embeddings.table)

    def call(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
             encoder_hidden_states=None, labels=None, is_decoder: bool = True, reduction: str = "mean",
             output_hidden_states: bool = False):  # fmt: skip
        from blipkit.modeling.outputs import CausalLMOutputWithCrossAttentions

        out = self.bert(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            is_decoder=is_decoder,
            output_hidden_states=output_hidden_states,
        )
        logits = self.logits(out.last_hidden_state)
        loss = lm_loss(logits, labels, self.config.label_smoothing, reduction) if labels is not None else None
        return CausalLMOutputWithCrossAttentions(loss=loss, logits=logits, hidden_states=out.hidden_states)


def lm_loss(logits, labels, label_smoothing: float, reduction: str = "mean"):
    """Next-token cross-entropy as torch computes it: logits at t predict labels at t+1, -100 labels ignored, label
    smoothing spread over the whole vocabulary."""
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"labels must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    log_probs = ops.log_softmax(ops.cast(logits[:, :-1], "float32"), axis=-1)
    targets = ops.cast(labels[:, 1:], "int32")
    valid = ops.cast(targets != -100, "float32")
    picked = ops.take_along_axis(log_probs, ops.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    per_token = -((1.0 - label_smoothing) * picked + label_smoothing * ops.mean(log_probs, axis=-1)) * valid
    if reduction == "none":
        return ops.sum(per_token, axis=1)
    if reduction == "sum":
        return ops.sum(per_token)
    return ops.sum(per_token) / ops.maximum(ops.sum(valid), 1.0)
