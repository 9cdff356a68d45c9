"""The TFBlip* classes: BLIP's task models in Keras 3, with the torch classes' arguments, outputs and checkpoints."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from blipkit.configs import BlipConfig, BlipTextConfig, BlipVisionConfig
from blipkit.generation.config import GenerationConfig
from blipkit.modeling.outputs import (
    BlipForConditionalGenerationModelOutput,
    BlipImageTextMatchingModelOutput,
    BlipOutput,
    BlipTextVisionModelOutput,
)
from blipkit.tf import generation
from blipkit.tf.base import TFPreTrainedModel, to_tensor
from blipkit.tf.layers import Dense
from blipkit.tf.text import TextDecoder, TextEncoder
from blipkit.tf.vision import VisionEncoder

TIED_HEAD = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def _normalize(x):
    return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)  # as torch's F.normalize


def _tied(config: BlipTextConfig, flag: bool) -> bool:
    # Inside a BlipConfig model the reference ties unless both its flag and the text config's say not to.
    return config.tie_word_embeddings or bool(flag)


class TFBlipVisionModel(TFPreTrainedModel):
    """The ViT: ``last_hidden_state`` post-normed, ``pooler_output`` the class token normed once more."""

    config_class = BlipVisionConfig
    reference_name = "BlipVisionModel"
    main_input_name = "pixel_values"

    def __init__(self, config: BlipVisionConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.vision = self.part("", VisionEncoder(config))

    def call(self, pixel_values=None, interpolate_pos_encoding: bool = False, output_hidden_states: bool = False):
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        pixel_values = to_tensor(pixel_values, "float32", "pixel_values")
        return self.vision(pixel_values, interpolate_pos_encoding, output_hidden_states)


class TFBlipTextModel(TFPreTrainedModel):
    """BERT encoder (bidirectional) or decoder (``is_decoder=True``: causal), cross-attending to
    ``encoder_hidden_states`` when given."""

    config_class = BlipTextConfig
    reference_name = "BlipTextModel"

    def __init__(self, config: BlipTextConfig, add_pooling_layer: bool = True, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.bert = self.part("", TextEncoder(config, add_pooling_layer))

    def call(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, encoder_embeds=None,
             encoder_hidden_states=None, encoder_attention_mask=None, is_decoder: bool = False,
             output_hidden_states: bool = False):  # fmt: skip
        del encoder_attention_mask  # accepted and not applied, as in the reference
        return self.bert(
            to_tensor(input_ids, "int32", "input_ids"),
            to_tensor(attention_mask, "int32", "attention_mask"),
            to_tensor(position_ids, "int32", "position_ids"),
            to_tensor(inputs_embeds, "float32", "inputs_embeds"),
            to_tensor(encoder_embeds, "float32", "encoder_embeds"),
            to_tensor(encoder_hidden_states, "float32", "encoder_hidden_states"),
            is_decoder=is_decoder,
            output_hidden_states=output_hidden_states,
        )


class TFBlipTextLMHeadModel(TFPreTrainedModel):
    """The text decoder with its LM head and label-smoothed LM loss."""

    config_class = BlipTextConfig
    reference_name = "BlipTextLMHeadModel"

    def __init__(self, config: BlipTextConfig, tie_word_embeddings: bool = False, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.decoder = self.part("", TextDecoder(config, _tied(config, tie_word_embeddings)))

    def tied_keys(self) -> set[str]:
        return set(TIED_HEAD) if self.decoder.head.decoder is None else set()

    def call(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
             encoder_hidden_states=None, encoder_attention_mask=None, labels=None, return_logits: bool = False,
             is_decoder: bool = True, reduction: str = "mean", output_hidden_states: bool = False):  # fmt: skip
        del encoder_attention_mask  # accepted and not applied, as in the reference
        out = self.decoder(
            to_tensor(input_ids, "int32", "input_ids"),
            to_tensor(attention_mask, "int32", "attention_mask"),
            to_tensor(position_ids, "int32", "position_ids"),
            to_tensor(inputs_embeds, "float32", "inputs_embeds"),
            to_tensor(encoder_hidden_states, "float32", "encoder_hidden_states"),
            to_tensor(labels, "int32", "labels"),
            is_decoder=is_decoder,
            reduction=reduction,
            output_hidden_states=output_hidden_states,
        )
        return out.logits[:, :-1] if return_logits else out


class _TFBlip(TFPreTrainedModel):
    config_class = BlipConfig

    def _vision(self, pixel_values, interpolate_pos_encoding: bool):
        return self.vision_model(to_tensor(pixel_values, "float32", "pixel_values"), interpolate_pos_encoding)


class TFBlipModel(_TFBlip):
    """Image and text encoders with projections into a joint space (image-text contrastive learning)."""

    reference_name = "BlipModel"

    def __init__(self, config: BlipConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.text_model = self.part("text_model", TextEncoder(config.text_config))
        self.vision_model = self.part("vision_model", VisionEncoder(config.vision_config))
        self.visual_projection = self.part(
            "visual_projection", Dense(config.vision_config.hidden_size, config.projection_dim, bias=False)
        )
        self.text_projection = self.part(
            "text_projection", Dense(config.text_config.hidden_size, config.projection_dim, bias=False)
        )
        self.logit_scale = self.param("logit_scale", ())

    def _text(self, input_ids, attention_mask, position_ids):
        return self.text_model(
            to_tensor(input_ids, "int32", "input_ids"),
            to_tensor(attention_mask, "int32", "attention_mask"),
            to_tensor(position_ids, "int32", "position_ids"),
        )

    def get_text_features(self, input_ids=None, attention_mask=None, position_ids=None):
        """The text model's output with ``pooler_output`` projected into the joint space (as the reference)."""
        out = self._text(input_ids, attention_mask, position_ids)
        return type(out)(**{**out.__dict__, "pooler_output": self.text_projection(out.pooler_output)})

    def get_image_features(self, pixel_values=None, interpolate_pos_encoding: bool = False):
        """The vision model's output with ``pooler_output`` projected into the joint space (as the reference)."""
        out = self._vision(pixel_values, interpolate_pos_encoding)
        return type(out)(**{**out.__dict__, "pooler_output": self.visual_projection(out.pooler_output)})

    def call(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
             return_loss: bool | None = None, interpolate_pos_encoding: bool = False):  # fmt: skip
        vision = self._vision(pixel_values, interpolate_pos_encoding)
        text = self._text(input_ids, attention_mask, position_ids)
        image_embeds = _normalize(self.visual_projection(vision.pooler_output))
        text_embeds = _normalize(self.text_projection(text.pooler_output))
        logits_per_text = ops.matmul(text_embeds, ops.transpose(image_embeds)) * ops.exp(self.logit_scale)
        loss = None
        if return_loss:
            labels = ops.arange(logits_per_text.shape[0])

            def cross_entropy(logits):
                return ops.mean(ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))

            loss = (cross_entropy(logits_per_text) + cross_entropy(ops.transpose(logits_per_text))) / 2
        return BlipOutput(
            loss=loss,
            logits_per_image=ops.transpose(logits_per_text),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )


class _TextGeneration(_TFBlip):
    """BLIP's generating models: the text decoder writes, cross-attending to image tokens (captions) or to the
    encoded question (VQA)."""

    text_decoder: TextDecoder

    def tied_keys(self) -> set[str]:
        return {f"text_decoder.{k}" for k in TIED_HEAD} if self.text_decoder.head.decoder is None else set()

    def _generation_config(self, generate_kwargs: dict[str, Any]) -> GenerationConfig:
        """The model's generation settings under the text decoder's special tokens under the call's keywords."""
        text = self.config.text_config
        config = self.generation_config.updated(eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id)
        config = config.updated(**generate_kwargs)
        config.validate()
        return config

    def _decode_text(self, context, prompt_ids, prompt_mask, config: GenerationConfig, seed: int | None):
        """Ids after ``prompt_ids`` from the text decoder cross-attending to ``context``: (ids buffer, length)."""
        prompt_length = prompt_ids.shape[1]
        max_length = generation.buffer_length(config, prompt_length)
        limit = self.config.text_config.max_position_embeddings
        if max_length > limit:
            raise ValueError(
                f"generation would reach {max_length} tokens but the model has {limit} positions; "
                "lower max_length / max_new_tokens or shorten the prompt"
            )
        if prompt_mask is None:
            pad = config.pad_token_id
            has_pad = ops.any(prompt_ids == pad) if pad not in (generation.eos_ids(config) or []) else False
            prompt_mask = ops.where(has_pad, ops.cast(prompt_ids != pad, "int32"), ops.ones_like(prompt_ids))
        bert = self.text_decoder.bert
        context_kv = [layer.crossattention.project_kv(context) for layer in bert.text_layers]
        per_prompt = generation.rows_per_prompt(config)
        if per_prompt > 1 and context.shape[0] is None:  # attention folds rows onto contexts only for known shapes
            context_kv = [(ops.repeat(k, per_prompt, 0), ops.repeat(v, per_prompt, 0)) for k, v in context_kv]
        rows = ops.shape(prompt_ids)[0] * per_prompt
        heads = self.config.text_config.num_attention_heads
        head_dim = self.config.text_config.hidden_size // heads
        caches = [(ops.zeros((rows, heads, max_length, head_dim)), ops.zeros((rows, heads, max_length, head_dim)))
                  for _ in bert.text_layers]  # fmt: skip

        def decode(ids, positions, key_mask, start, caches):
            hidden, caches = bert.decode(ids, positions, key_mask, start, caches, context_kv)
            return self.text_decoder.logits(hidden[:, -1]), caches

        return generation.generate(decode, caches, prompt_ids, prompt_mask, config, seed)

    def _run_generation(self, config: GenerationConfig, seed: int | None, interpolate_pos_encoding: bool,
                        inputs: dict[str, Any], jit_compile: bool):  # fmt: skip
        """The generation body over ``inputs``, eagerly or as one compiled program cached per settings (XLA then
        compiles once per input shape)."""
        if not jit_compile:
            ids, length = self._generation_body(config, seed, interpolate_pos_encoding)(**inputs)
        else:
            key = (repr(config), seed, interpolate_pos_encoding)
            compiled = self._compiled.get(key)
            if compiled is None:
                body = self._generation_body(config, seed, interpolate_pos_encoding)
                compiled = self._compiled[key] = _compile(self, body)
            ids, length = compiled(inputs)
        return ids[:, : int(length)]

    def export(self, filepath, format: str = "tf_saved_model", prompt_length: int | None = None,
               seed: int | None = None, verbose: bool | None = None, **generate_kwargs) -> None:  # fmt: skip
        """Write a TensorFlow SavedModel whose ``serve`` signature generates: captioning takes ``pixel_values`` (and,
        when ``prompt_length`` is given, ``input_ids`` of that many tokens: a signature has fixed lengths, so export
        once per prompt length), VQA takes ``input_ids``, ``pixel_values`` and ``attention_mask``; both return the
        generated ids. ``generate_kwargs`` (``max_new_tokens``, ``num_beams``, ...) are fixed at export. Reload it
        with ``tf.saved_model.load(filepath).serve(...)``: no blipkit or Keras needed to serve it."""
        from blipkit.tf.export import export_generation

        if format != "tf_saved_model":
            raise ValueError(f"the generating models export format='tf_saved_model' only, got {format!r}")
        config = self._generation_config(generate_kwargs)
        export_generation(self, filepath, self._generation_body(config, seed),
                          self._export_inputs(prompt_length), self._export_defaults, verbose)  # fmt: skip

    @property
    def _compiled(self) -> dict:
        if "_compiled_generation" not in self.__dict__:
            object.__setattr__(self, "_compiled_generation", {})
        return self.__dict__["_compiled_generation"]


def _generation_inputs(input_ids, pixel_values, attention_mask) -> dict[str, Any]:
    """What a generation body takes, as tensors; no mask when none was given (the body infers one)."""
    inputs = {
        "input_ids": to_tensor(input_ids, "int32", "input_ids"),
        "pixel_values": to_tensor(pixel_values, "float32", "pixel_values"),
    }
    if attention_mask is not None:
        inputs["attention_mask"] = to_tensor(attention_mask, "int32", "attention_mask")
    return inputs


def _image_size(config: BlipConfig) -> tuple[int, int]:
    size = config.vision_config.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _compile(model: keras.Model, body):
    """``body`` as one XLA program: tf.function(jit_compile=True), or jax.jit with the model's variables passed in
    (Keras's stateless scope), so the weights are arguments rather than constants baked into the program."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda inputs: body(**inputs), jit_compile=True, autograph=False)
        return function
    if backend == "jax":
        import jax

        variables = model.variables

        def pure(values, inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
                return body(**inputs)

        jitted = jax.jit(pure)
        return lambda inputs: jitted([v.value for v in variables], inputs)
    raise NotImplementedError(f"jit_compile=True runs on the TensorFlow and JAX backends, not {backend}")


class TFBlipForConditionalGeneration(_TextGeneration):
    """Captioning: the image encoder and a text decoder that cross-attends to all image tokens."""

    reference_name = "BlipForConditionalGeneration"
    main_input_name = "pixel_values"

    def __init__(self, config: BlipConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.generation_config = GenerationConfig()
        self.vision_model = self.part("vision_model", VisionEncoder(config.vision_config))
        tied = _tied(config.text_config, config.tie_word_embeddings)
        self.text_decoder = self.part("text_decoder", TextDecoder(config.text_config, tied))

    def call(self, pixel_values, input_ids=None, attention_mask=None, labels=None,
             interpolate_pos_encoding: bool = False):  # fmt: skip
        vision = self._vision(pixel_values, interpolate_pos_encoding)
        out = self.text_decoder(
            to_tensor(input_ids, "int32", "input_ids"),
            to_tensor(attention_mask, "int32", "attention_mask"),
            encoder_hidden_states=vision.last_hidden_state,
            labels=to_tensor(labels, "int32", "labels"),
        )
        return BlipForConditionalGenerationModelOutput(
            loss=out.loss, logits=out.logits, image_embeds=vision.last_hidden_state,
            last_hidden_state=vision.last_hidden_state,
        )  # fmt: skip

    def generate(self, pixel_values, input_ids=None, attention_mask=None, interpolate_pos_encoding: bool = False,
                 seed: int | None = None, jit_compile: bool = False, **generate_kwargs):  # fmt: skip
        """Caption ids, prompt included, as the torch class returns them (an int32 tensor).

        ``input_ids`` is an optional prompt ("a picture of") as the processor encodes it: its first token becomes
        [DEC] and its last ([SEP]) is dropped. ``generate_kwargs`` are ``max_new_tokens``, ``num_beams``,
        ``do_sample``, ... (``GenerationConfig``); ``seed`` fixes sampling; ``jit_compile=True`` runs the whole
        generation as one XLA program, compiled once per settings and input shapes."""
        config = self._generation_config(generate_kwargs)
        pixel_values = to_tensor(pixel_values, "float32", "pixel_values")
        text = self.config.text_config
        batch = pixel_values.shape[0]
        if input_ids is None:
            input_ids = ops.tile(ops.convert_to_tensor([[text.bos_token_id, text.eos_token_id]], "int32"), (batch, 1))
        input_ids = to_tensor(input_ids, "int32", "input_ids")
        if len(input_ids.shape) != 2 or input_ids.shape[0] != batch or input_ids.shape[1] < 2:
            raise ValueError(
                f"input_ids must have shape ({batch}, tokens >= 2) - one prompt per image, ending in [SEP] as the "
                f"processor writes it - got {tuple(input_ids.shape)}"
            )
        inputs = _generation_inputs(input_ids, pixel_values, attention_mask)
        return self._run_generation(config, seed, interpolate_pos_encoding, inputs, jit_compile)

    def _generation_body(self, config: GenerationConfig, seed: int | None, interpolate_pos_encoding: bool = False):
        bos = self.config.text_config.bos_token_id

        def caption(pixel_values, input_ids, attention_mask=None):
            image = self.vision_model(pixel_values, interpolate_pos_encoding).last_hidden_state
            prompt = ops.concatenate([ops.ones_like(input_ids[:, :1]) * bos, input_ids[:, 1:-1]], 1)
            mask = attention_mask[:, :-1] if attention_mask is not None else None
            return self._decode_text(image, prompt, mask, config, seed)

        return caption

    def _export_inputs(self, prompt_length: int | None) -> dict[str, Any]:
        import tensorflow as tf

        height, width = _image_size(self.config)
        inputs = {"pixel_values": tf.TensorSpec((None, 3, height, width), tf.float32)}
        if prompt_length is not None:
            inputs["input_ids"] = tf.TensorSpec((None, prompt_length), tf.int32)
        return inputs

    def _export_defaults(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if "input_ids" in inputs:
            return inputs
        text = self.config.text_config
        start = ops.convert_to_tensor([[text.bos_token_id, text.eos_token_id]], "int32")
        return {**inputs, "input_ids": ops.tile(start, (ops.shape(inputs["pixel_values"])[0], 1))}


class _MultimodalEncoder(_TFBlip):
    """Text encoded with cross-attention to the image, as ITM and VQA do; ``use_enc_token=True`` starts it with [ENC]
    as the original BLIP (the reference keeps [CLS])."""

    use_enc_token: bool
    text_encoder: TextEncoder

    def _encode_with_image(self, input_ids, attention_mask, image_tokens):
        if self.use_enc_token:
            enc = self.config.text_config.bos_token_id + 1
            input_ids = ops.concatenate([ops.ones_like(input_ids[:, :1]) * enc, input_ids[:, 1:]], axis=1)
        return self.text_encoder(input_ids, attention_mask, encoder_hidden_states=image_tokens).last_hidden_state


class TFBlipForQuestionAnswering(_TextGeneration, _MultimodalEncoder):
    """VQA: the question is encoded with cross-attention to the image, the answer decoded from the question."""

    reference_name = "BlipForQuestionAnswering"

    def __init__(self, config: BlipConfig, use_enc_token: bool = False, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if config.vision_config.hidden_size != config.text_config.hidden_size:
            raise ValueError(
                "BlipForQuestionAnswering needs vision_config.hidden_size == text_config.hidden_size, got "
                f"{config.vision_config.hidden_size} and {config.text_config.hidden_size}"
            )
        self.use_enc_token = use_enc_token
        self.generation_config = GenerationConfig()
        self.vision_model = self.part("vision_model", VisionEncoder(config.vision_config))
        self.text_encoder = self.part("text_encoder", TextEncoder(config.text_config, add_pooling_layer=False))
        tied = _tied(config.text_config, config.tie_word_embeddings)
        self.text_decoder = self.part("text_decoder", TextDecoder(config.text_config, tied))

    def call(self, input_ids, pixel_values, decoder_input_ids=None, decoder_attention_mask=None, attention_mask=None,
             labels=None, interpolate_pos_encoding: bool = False):  # fmt: skip
        if labels is None and decoder_input_ids is None:
            raise ValueError(
                "Either `decoder_input_ids` or `labels` should be passed when calling `forward` with"
                " `BlipForQuestionAnswering`. if you are training the model make sure that `labels` is passed, if you"
                " are using the model for inference make sure that `decoder_input_ids` is passed or call `generate`"
            )
        vision = self._vision(pixel_values, interpolate_pos_encoding)
        question = self._encode_with_image(
            to_tensor(input_ids, "int32", "input_ids"), to_tensor(attention_mask, "int32", "attention_mask"),
            vision.last_hidden_state,
        )  # fmt: skip
        labels = to_tensor(labels, "int32", "labels")
        answer = self.text_decoder(
            labels if decoder_input_ids is None else to_tensor(decoder_input_ids, "int32", "decoder_input_ids"),
            to_tensor(decoder_attention_mask, "int32", "decoder_attention_mask"),
            encoder_hidden_states=question,
            labels=labels,
        )
        return BlipTextVisionModelOutput(
            loss=ops.mean(answer.loss) if labels is not None else None,
            image_embeds=vision.last_hidden_state,
            last_hidden_state=vision.last_hidden_state,
        )

    def generate(self, input_ids, pixel_values, attention_mask=None, interpolate_pos_encoding: bool = False,
                 seed: int | None = None, jit_compile: bool = False, **generate_kwargs):  # fmt: skip
        """Answer ids, starting with [DEC], as the torch class returns them. ``input_ids`` are the questions."""
        config = self._generation_config(generate_kwargs)
        inputs = _generation_inputs(input_ids, pixel_values, attention_mask)
        return self._run_generation(config, seed, interpolate_pos_encoding, inputs, jit_compile)

    def _generation_body(self, config: GenerationConfig, seed: int | None, interpolate_pos_encoding: bool = False):
        bos = self.config.text_config.bos_token_id

        def answer(input_ids, pixel_values, attention_mask=None):
            image = self.vision_model(pixel_values, interpolate_pos_encoding).last_hidden_state
            question = self._encode_with_image(input_ids, attention_mask, image)
            # The reference decodes against every question token, padding included.
            start = ops.full((ops.shape(input_ids)[0], 1), bos, "int32")  # one column, whatever the question's
            return self._decode_text(question, start, None, config, seed)

        return answer

    def _export_inputs(self, prompt_length: int | None) -> dict[str, Any]:
        import tensorflow as tf

        height, width = _image_size(self.config)
        return {
            "input_ids": tf.TensorSpec((None, prompt_length), tf.int32),
            "pixel_values": tf.TensorSpec((None, 3, height, width), tf.float32),
            "attention_mask": tf.TensorSpec((None, prompt_length), tf.int32),
        }

    def _export_defaults(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return inputs


class TFBlipForImageTextRetrieval(_MultimodalEncoder):
    """Image-text matching (ITM head: logits for no/yes) and contrastive similarity (ITC: cosine)."""

    reference_name = "BlipForImageTextRetrieval"

    def __init__(self, config: BlipConfig, use_enc_token: bool = False, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.use_enc_token = use_enc_token
        self.vision_model = self.part("vision_model", VisionEncoder(config.vision_config))
        self.text_encoder = self.part("text_encoder", TextEncoder(config.text_config, add_pooling_layer=False))
        text_width, vision_width = config.text_config.hidden_size, config.vision_config.hidden_size
        self.vision_proj = self.part("vision_proj", Dense(vision_width, config.image_text_hidden_size))
        self.text_proj = self.part("text_proj", Dense(text_width, config.image_text_hidden_size))
        self.itm_head = self.part("itm_head", Dense(text_width, 2))

    def call(self, input_ids, pixel_values, use_itm_head: bool = True, attention_mask=None,
             interpolate_pos_encoding: bool = False):  # fmt: skip
        input_ids = to_tensor(input_ids, "int32", "input_ids")
        attention_mask = to_tensor(attention_mask, "int32", "attention_mask")
        vision = self._vision(pixel_values, interpolate_pos_encoding)
        if use_itm_head:
            question = self._encode_with_image(input_ids, attention_mask, vision.last_hidden_state)
            score = self.itm_head(question[:, 0])
        else:
            question = self.text_encoder(input_ids, attention_mask).last_hidden_state
            score = ops.matmul(self._image_embedding(vision.last_hidden_state),
                               ops.transpose(self._text_embedding(question)))  # fmt: skip
        return BlipImageTextMatchingModelOutput(
            itm_score=score, last_hidden_state=vision.last_hidden_state, question_embeds=question
        )

    def get_image_features(self, pixel_values, interpolate_pos_encoding: bool = False):
        """The normalized ITC image embedding: (batch, image_text_hidden_size)."""
        return self._image_embedding(self._vision(pixel_values, interpolate_pos_encoding).last_hidden_state)

    def get_text_features(self, input_ids, attention_mask=None):
        """The normalized ITC text embedding, comparable by dot product with ``get_image_features``."""
        tokens = self.text_encoder(
            to_tensor(input_ids, "int32", "input_ids"), to_tensor(attention_mask, "int32", "attention_mask")
        ).last_hidden_state
        return self._text_embedding(tokens)

    def _image_embedding(self, image_tokens):
        return _normalize(self.vision_proj(image_tokens[:, 0]))

    def _text_embedding(self, text_tokens):
        return _normalize(self.text_proj(text_tokens[:, 0]))
