"""BLIP's task models: contrastive (BlipModel), captioning, visual question answering, image-text retrieval."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from blipkit.checkpoint import KeyMap, under
from blipkit.configs import BlipConfig
from blipkit.generation.config import GenerationConfig
from blipkit.generation.mixin import GenerationMixin
from blipkit.generation.search import Generators
from blipkit.modeling.base import PreTrainedModel
from blipkit.modeling.bert import TEXT_KEYS, BlipTextLMHeadModel, BlipTextModel
from blipkit.modeling.outputs import (
    BlipForConditionalGenerationModelOutput,
    BlipImageTextMatchingModelOutput,
    BlipOutput,
    BlipTextVisionModelOutput,
)
from blipkit.modeling.vision import VISION_KEYS, BlipVisionModel

BLIP_KEYS = KeyMap(under("vision_model", VISION_KEYS) + TEXT_KEYS)


class BlipPreTrainedModel(PreTrainedModel):
    config_class = BlipConfig
    key_map = BLIP_KEYS

    def _image_tokens(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool):
        """Vision outputs, and a mask of ones over the image tokens for cross-attention."""
        vision = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        image_embeds = vision.last_hidden_state
        ones = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        return vision, image_embeds, ones


class _TextGeneration(GenerationMixin):
    """BLIP's generating models: the text decoder writes, cross-attending to image tokens (captions) or to the
    encoded question (VQA)."""

    config: BlipConfig
    text_decoder: BlipTextLMHeadModel
    decoder_part = "text_decoder"

    def _decode_text(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor | None,
        generator: Generators,
        generate_kwargs: dict,
    ) -> torch.Tensor:
        """The text decoder's ids after ``prompt_ids``, cross-attending to ``context`` (image or question tokens)."""
        decoder = self.text_decoder
        return self._decode(
            decoder.decoder_factory(context, context_mask), prompt_ids, prompt_mask, decoder.special_tokens(),
            generate_kwargs, generator, self.config.text_config.max_position_embeddings,
        )  # fmt: skip


class _MultimodalEncoderMixin:
    """Text encoded with cross-attention to the image, as ITM and VQA do.

    The original BLIP starts the multimodal encoder's input with [ENC]; the reference keeps [CLS].

    ``use_enc_token=True`` (a constructor / from_pretrained argument) swaps the first token for [ENC], which in the
    BLIP vocabulary follows [DEC], the bos token (30522 -> 30523).
    """

    use_enc_token: bool

    def _encoder_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.use_enc_token:
            return input_ids
        ids = input_ids.clone()
        ids[:, 0] = self.config.text_config.bos_token_id + 1
        return ids

    def encode_question(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ):
        """Vision outputs, and the text's tokens after cross-attending to the image (the multimodal encoder)."""
        vision, image_embeds, image_mask = self._image_tokens(pixel_values, interpolate_pos_encoding)
        return vision, self._encode_with_image(input_ids, attention_mask, image_embeds, image_mask)

    def _encode_with_image(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_embeds: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The text's tokens after cross-attending to image tokens already computed: (batch, tokens, hidden)."""
        question = self.text_encoder(
            input_ids=self._encoder_ids(input_ids),
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        )
        return question.last_hidden_state


class BlipModel(BlipPreTrainedModel):
    """Image and text encoders with projections into a joint space (image-text contrastive learning)."""

    def __init__(self, config: BlipConfig) -> None:
        super().__init__(config)
        self.text_model = BlipTextModel(config.text_config)
        self.vision_model = BlipVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    def get_text_features(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ):
        """The text model's output with ``pooler_output`` projected into the joint space (as the reference)."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return dataclasses.replace(out, pooler_output=self.text_projection(out.pooler_output))

    def get_image_features(self, pixel_values: torch.Tensor | None = None, interpolate_pos_encoding: bool = False):
        """The vision model's output with ``pooler_output`` projected into the joint space (as the reference)."""
        out = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        return dataclasses.replace(out, pooler_output=self.visual_projection(out.pooler_output))

    def get_multimodal_features(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        _, image_embeds, image_mask = self._image_tokens(pixel_values, interpolate_pos_encoding)
        out = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        )
        return self.text_projection(out.pooler_output)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> BlipOutput:
        vision = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        image_embeds = F.normalize(self.visual_projection(vision.pooler_output), dim=-1)
        text_embeds = F.normalize(self.text_projection(text.pooler_output), dim=-1)
        logits_per_text = text_embeds @ image_embeds.to(text_embeds.dtype).t() * self.logit_scale.exp()
        loss = None
        if return_loss:
            labels = torch.arange(len(logits_per_text), device=logits_per_text.device)
            loss = (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2
        return BlipOutput(
            loss=loss,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )


class BlipForConditionalGeneration(_TextGeneration, BlipPreTrainedModel):
    """Captioning: the image encoder and a text decoder that cross-attends to all image tokens."""

    main_input_name = "pixel_values"

    def __init__(self, config: BlipConfig) -> None:
        super().__init__(config)
        self.generation_config = GenerationConfig()
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_decoder = BlipTextLMHeadModel(config.text_config, tie_word_embeddings=config.tie_word_embeddings)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_decoder.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        logits_to_keep: int = 0,
    ) -> BlipForConditionalGenerationModelOutput:
        vision, image_embeds, _ = self._image_tokens(pixel_values, interpolate_pos_encoding)
        out = self.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            labels=labels,
            logits_to_keep=logits_to_keep,
        )
        return BlipForConditionalGenerationModelOutput(
            loss=out.loss,
            logits=out.logits,
            image_embeds=image_embeds,
            last_hidden_state=vision.last_hidden_state,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        generator: Generators = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Caption ids, prompt included, as the reference returns them.

        ``input_ids`` is an optional prompt ("a picture of") as the processor encodes it: its first token becomes
        [DEC] and its last ([SEP]) is dropped. ``generate_kwargs`` are the usual ``max_new_tokens``, ``num_beams``,
        ``do_sample``, ... (see ``GenerationConfig``); ``generator`` makes sampling reproducible.
        """
        _, image_embeds, _ = self._image_tokens(pixel_values, interpolate_pos_encoding)
        batch = image_embeds.shape[0]
        bos = self.config.text_config.bos_token_id
        if input_ids is None:
            input_ids = torch.tensor([[bos, self.config.text_config.eos_token_id]], device=image_embeds.device)
            input_ids = input_ids.repeat(batch, 1)
        else:
            input_ids = torch.as_tensor(input_ids, device=image_embeds.device).clone()
            if input_ids.ndim != 2 or input_ids.shape[0] != batch or input_ids.shape[1] < 2:
                raise ValueError(
                    f"input_ids must have shape ({batch}, tokens >= 2) - one prompt per image, ending in [SEP] "
                    f"as the processor writes it - got {tuple(input_ids.shape)}"
                )
            input_ids[:, 0] = bos
        if attention_mask is not None:
            attention_mask = attention_mask[:, :-1]
        return self._decode_text(image_embeds, None, input_ids[:, :-1], attention_mask, generator, generate_kwargs)


class BlipForQuestionAnswering(_TextGeneration, _MultimodalEncoderMixin, BlipPreTrainedModel):
    """VQA: the question is encoded with cross-attention to the image, the answer decoded from the question.

    ``mask_question_padding=True`` makes the answer decoder ignore the padding of a batch of questions, as the
    original BLIP does. The reference attends to it, so by default a question's answer can depend on the length
    of the longest question in its batch; we match that unless asked not to.
    """

    def __init__(self, config: BlipConfig, use_enc_token: bool = False, mask_question_padding: bool = False) -> None:
        super().__init__(config)
        # The answer decoder's cross-attention is sized for image tokens but reads question tokens.
        if config.vision_config.hidden_size != config.text_config.hidden_size:
            raise ValueError(
                "BlipForQuestionAnswering needs vision_config.hidden_size == text_config.hidden_size, got "
                f"{config.vision_config.hidden_size} and {config.text_config.hidden_size}"
            )
        self.use_enc_token = use_enc_token
        self.generation_config = GenerationConfig()
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.text_decoder = BlipTextLMHeadModel(
            config.text_config,
            tie_word_embeddings=config.tie_word_embeddings,
            mask_cross_attention=mask_question_padding,
        )

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> BlipTextVisionModelOutput:
        if labels is None and decoder_input_ids is None:
            raise ValueError(
                "Either `decoder_input_ids` or `labels` should be passed when calling `forward` with"
                " `BlipForQuestionAnswering`. if you are training the model make sure that `labels` is passed, if you"
                " are using the model for inference make sure that `decoder_input_ids` is passed or call `generate`"
            )
        vision, question_embeds = self.encode_question(
            input_ids, pixel_values, attention_mask, interpolate_pos_encoding
        )
        answer = self.text_decoder(
            input_ids=labels if decoder_input_ids is None else decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=question_embeds,
            encoder_attention_mask=attention_mask,
            labels=labels,
        )
        return BlipTextVisionModelOutput(
            loss=answer.loss.mean() if labels is not None else None,
            image_embeds=vision.last_hidden_state,
            last_hidden_state=vision.last_hidden_state,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        generator: Generators = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Answer ids, starting with [DEC], as the reference returns them. ``input_ids`` are the questions."""
        if isinstance(input_ids, list):
            input_ids = torch.tensor(input_ids)
        _, question = self.encode_question(input_ids, pixel_values, attention_mask, interpolate_pos_encoding)
        # The reference decodes against every question token, padding included (see mask_question_padding).
        question_mask = attention_mask if self.text_decoder.bert.mask_cross_attention else None
        start = torch.full((question.shape[0], 1), self.config.text_config.bos_token_id, device=question.device)
        return self._decode_text(question, question_mask, start, None, generator, generate_kwargs)


class BlipForImageTextRetrieval(_MultimodalEncoderMixin, BlipPreTrainedModel):
    """Image-text matching (ITM head: logits for no/yes) and contrastive similarity (ITC: cosine)."""

    def __init__(self, config: BlipConfig, use_enc_token: bool = False) -> None:
        super().__init__(config)
        self.use_enc_token = use_enc_token
        self.vision_model = BlipVisionModel(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, config.image_text_hidden_size)
        self.text_proj = nn.Linear(config.text_config.hidden_size, config.image_text_hidden_size)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        use_itm_head: bool = True,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> BlipImageTextMatchingModelOutput:
        if use_itm_head:
            vision, question = self.encode_question(input_ids, pixel_values, attention_mask, interpolate_pos_encoding)
            score = self.itm_head(question[:, 0])
        else:
            vision = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
            question = self._encode_text_alone(input_ids, attention_mask)
            score = self._image_embedding(vision.last_hidden_state) @ self._text_embedding(question).t()
        return BlipImageTextMatchingModelOutput(
            itm_score=score,
            last_hidden_state=vision.last_hidden_state,
            question_embeds=question,
        )

    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The normalized ITC image embedding: (batch, image_text_hidden_size). The reference's retrieval model has
        no such method (BlipModel's returns its unnormalized projection in ``pooler_output``)."""
        vision = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        return self._image_embedding(vision.last_hidden_state)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The normalized ITC text embedding: (texts, image_text_hidden_size), comparable by dot product with
        ``get_image_features``."""
        return self._text_embedding(self._encode_text_alone(input_ids, attention_mask))

    def image_text_similarity(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ITC cosine similarity of every image with every text: (images, texts), as ``forward(use_itm_head=False)``."""
        return self(input_ids, pixel_values, use_itm_head=False, attention_mask=attention_mask).itm_score

    def image_text_scores(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        image_of_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each image-text pair (a single image pairs with every text, else text i with image i, or with image
        ``image_of_text[i]``): the ITM head's probability that the text matches and the ITC cosine similarity, both
        (texts,), from one pass of the ViT per image."""
        image_tokens, image_embeds = self.read_images(pixel_values, interpolate_pos_encoding)
        if image_of_text is not None:
            image_tokens, image_embeds = image_tokens[image_of_text], image_embeds[image_of_text]
        match = self.match_logits(image_tokens, input_ids, attention_mask).float().softmax(-1)[:, 1]
        similarity = (image_embeds * self.get_text_features(input_ids, attention_mask)).sum(-1)
        return match, similarity.float()

    def read_images(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ViT pass: the image tokens the ITM head's text cross-attends to, (batch, tokens, width), and the
        normalized ITC embeddings, (batch, dim). Retrieval keeps the tokens to re-rank many texts per image."""
        _, image_tokens, _ = self._image_tokens(pixel_values, interpolate_pos_encoding)
        return image_tokens, self._image_embedding(image_tokens)

    def match_logits(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ITM head's logits (no, yes) for text i with image tokens i (from ``read_images``): (pairs, 2), as
        ``forward(use_itm_head=True).itm_score`` computes them from pixel values."""
        ones = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device)
        return self.itm_head(self._encode_with_image(input_ids, attention_mask, image_tokens, ones)[:, 0])

    def _encode_text_alone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        # Unimodal text encoding: [CLS] in the original BLIP as well, so no [ENC] swap here.
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _image_embedding(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1)

    def _text_embedding(self, text_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_tokens[:, 0]), dim=-1)
