"""BLIP-2: a frozen image encoder, the Q-Former's query tokens, and a language model that reads them as a prefix."""

from __future__ import annotations

import torch
from torch import nn

from blipkit.checkpoint import KeyMap, under
from blipkit.configs import Blip2Config
from blipkit.generation.config import GenerationConfig
from blipkit.generation.mixin import GenerationMixin
from blipkit.generation.search import Generators
from blipkit.modeling.base import PreTrainedModel
from blipkit.modeling.layers import lm_loss
from blipkit.modeling.opt import OPT_KEYS, OPTForCausalLM, opt_positions
from blipkit.modeling.outputs import (
    BaseModelOutputWithPooling,
    BaseModelOutputWithPoolingAndCrossAttentions,
    Blip2ForConditionalGenerationModelOutput,
    Blip2ImageFeatures,
    Blip2ImageTextMatchingModelOutput,
    Blip2TextModelOutput,
    Blip2VisionModelOutput,
)
from blipkit.modeling.qformer import QFORMER_KEYS, Blip2QFormerModel, QFormerTextEmbeddings
from blipkit.modeling.t5 import T5_KEYS, T5ForConditionalGeneration
from blipkit.modeling.vision import VISION_KEYS, Blip2VisionModel

LANGUAGE_MODELS = {"opt": OPTForCausalLM, "t5": T5ForConditionalGeneration}
# Most specific first: a language model's "decoder.layers.N.self_attn.q" is not a Q-Former "layers.N.self_attn.q".
# OPT and T5 both name our decoder layers "decoder.layers.N", so each gets its own table.
BLIP2_VISION_KEYS = under("vision_model", VISION_KEYS)
LANGUAGE_MODEL_KEYS = {
    kind: KeyMap(BLIP2_VISION_KEYS + keys + QFORMER_KEYS) for kind, keys in (("opt", OPT_KEYS), ("t5", T5_KEYS))
}


class Blip2PreTrainedModel(PreTrainedModel):
    """What every BLIP-2 model holds: the Q-Former and its query tokens, and - unless it reads text alone - the image
    encoder whose tokens the queries read."""

    config_class = Blip2Config
    key_map = KeyMap(BLIP2_VISION_KEYS + QFORMER_KEYS)
    reads_images = True  # False: a text-only model, with no image encoder

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        if self.reads_images:
            self.vision_model = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(torch.empty(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)

    def _read_image(
        self,
        image: torch.Tensor,
        embeds: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        """The Q-Former over image tokens (batch, tokens, width): its query tokens cross-attend to them; given
        ``embeds``, the queries followed by text (as ``QFormerTextEmbeddings`` gives them) and ``mask`` over both,
        the text reads along. ``last_hidden_state`` is (batch, queries [+ text], width)."""
        if embeds is None:
            embeds = self.query_tokens.expand(image.shape[0], -1, -1)
        ones = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        return self.qformer(
            embeds, query_length=self.config.num_query_tokens, attention_mask=mask, encoder_hidden_states=image,
            encoder_attention_mask=ones,
        )  # fmt: skip

    def _text_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """Drop the image placeholders a Blip2Processor put before the text (when the config has them)."""
        if self.config.image_token_index is None:
            return input_ids, attention_mask
        n = self.config.num_query_tokens
        return input_ids[:, n:], attention_mask[:, n:] if attention_mask is not None else None


class Blip2VisionModelWithProjection(Blip2PreTrainedModel):
    """Image -> query tokens -> normalized embeddings in the image-text space: (batch, queries, dim)."""

    main_input_name = "pixel_values"

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        self.vision_projection = nn.Linear(config.qformer_config.hidden_size, config.image_text_hidden_size)

    def forward(self, pixel_values: torch.Tensor | None = None) -> Blip2VisionModelOutput:
        vision = self.vision_model(pixel_values)
        embeds = self.vision_projection(self._read_image(vision.last_hidden_state).last_hidden_state)
        return Blip2VisionModelOutput(
            image_embeds=nn.functional.normalize(embeds, dim=-1), last_hidden_state=vision.last_hidden_state
        )


class Blip2TextModelWithProjection(Blip2PreTrainedModel):
    """Text through the Q-Former alone -> normalized embeddings of every token in the image-text space."""

    reads_images = False

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        self.embeddings = QFormerTextEmbeddings(config.qformer_config)
        self.text_projection = nn.Linear(config.qformer_config.hidden_size, config.image_text_hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Blip2TextModelOutput:
        text = self.qformer(self.embeddings(input_ids), query_length=0, attention_mask=attention_mask)
        embeds = self.text_projection(text.last_hidden_state)
        return Blip2TextModelOutput(
            text_embeds=nn.functional.normalize(embeds, dim=-1), last_hidden_state=text.last_hidden_state
        )


class Blip2ForImageTextRetrieval(Blip2PreTrainedModel):
    """Image-text matching (``use_image_text_matching_head=True``: ITM logits, averaged over the queries) or
    contrastive similarity (default: the best query's cosine with the text's first token)."""

    main_input_name = "pixel_values"

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        width = config.qformer_config.hidden_size
        self.embeddings = QFormerTextEmbeddings(config.qformer_config)
        self.vision_projection = nn.Linear(width, config.image_text_hidden_size)
        self.text_projection = nn.Linear(width, config.image_text_hidden_size)
        self.itm_head = nn.Linear(width, 2)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        use_image_text_matching_head: bool = False,
    ) -> Blip2ImageTextMatchingModelOutput:
        vision = self.vision_model(pixel_values)
        image = vision.last_hidden_state
        if use_image_text_matching_head:
            logits_per_image, text = self._match_logits(image, input_ids, attention_mask)
            text_embeds, image_embeds = text.last_hidden_state, None
        else:
            image_embeds = self._image_embeddings(image)
            text_embeds, text = self._text_embedding(input_ids, attention_mask)
            # (images, queries, texts) -> the best-matching query for each image-text pair
            logits_per_image = (image_embeds @ text_embeds.t()).max(dim=1).values
        return Blip2ImageTextMatchingModelOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The normalized image embeddings of every query: (batch, num_query_tokens, image_text_hidden_size), the
        ``image_embeds`` of ``forward``. The reference's retrieval model has no such method."""
        return self._image_embeddings(self.vision_model(pixel_values).last_hidden_state)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The normalized embedding of each text's first token: (texts, image_text_hidden_size), comparable by dot
        product with every query of ``get_image_features`` (the best query's is the ITC similarity)."""
        return self._text_embedding(input_ids, attention_mask)[0]

    def image_text_similarity(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The best query's cosine with each text, for every image and text: (images, texts), as ``forward``."""
        return self(pixel_values, input_ids, attention_mask).logits_per_image

    def image_text_scores(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_of_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each image-text pair (a single image pairs with every text, else text i with image i, or with image
        ``image_of_text[i]``): the ITM probability that the text matches and the best query's cosine with it, both
        (texts,), from one pass of the ViT per image."""
        image, queries = self.read_images(pixel_values)
        if image_of_text is not None:
            image, queries = image[image_of_text], queries[image_of_text]
        # (images, queries, dim) x (texts, dim) -> (texts, queries): each text against its own image's queries
        similarity = (queries * self.get_text_features(input_ids, attention_mask)[:, None]).sum(-1).max(dim=1).values
        image = image.expand(input_ids.shape[0], -1, -1)  # the ITM queries cross-attend to their pair's image
        match = self.match_logits(image, input_ids, attention_mask).float().softmax(-1)[:, 1]
        return match, similarity.float()

    def read_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One ViT pass: the image tokens the ITM queries cross-attend to, (batch, tokens, width), and the normalized
        query embeddings, (batch, queries, dim). Retrieval keeps the tokens to re-rank many texts per image."""
        image = self.vision_model(pixel_values).last_hidden_state
        return image, self._image_embeddings(image)

    def match_logits(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ITM logits (no, yes), averaged over the queries, for text i with image tokens i (from
        ``read_images``): (pairs, 2), as ``forward(use_image_text_matching_head=True)`` computes them."""
        return self._match_logits(image_tokens, input_ids, attention_mask)[0]

    def _match_logits(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """ITM logits averaged over the queries, (batch, 2), and the Q-Former's output for queries and text."""
        n = self.config.num_query_tokens
        queries = self.query_tokens.expand(image.shape[0], -1, -1)
        if self.config.image_token_index is not None:
            input_ids = input_ids[:, n:]  # the placeholders' mask stands for the queries', as the reference reads it
        elif attention_mask is not None:  # the queries are always attended to
            attention_mask = torch.cat([attention_mask.new_ones(queries.shape[:2]), attention_mask], dim=1)
        text = self._read_image(image, self.embeddings(input_ids, queries), attention_mask)
        return self.itm_head(text.last_hidden_state[:, :n]).mean(dim=1), text

    def _image_embeddings(self, image: torch.Tensor) -> torch.Tensor:
        """Normalized query embeddings in the image-text space: (batch, queries, dim)."""
        return nn.functional.normalize(self.vision_projection(self._read_image(image).last_hidden_state), dim=-1)

    def _text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """The normalized embedding of each text's first token, (texts, dim), and the Q-Former's text output."""
        input_ids, attention_mask = self._text_ids(input_ids, attention_mask)
        text = self.qformer(self.embeddings(input_ids), query_length=0, attention_mask=attention_mask)
        return nn.functional.normalize(self.text_projection(text.last_hidden_state[:, 0]), dim=-1), text


class _Blip2WithLanguageModel(Blip2PreTrainedModel):
    """Image -> ViT -> Q-Former queries -> projection -> language model, which reads them where the prompt has
    ``image_token_index`` placeholders (the processor puts ``num_query_tokens`` of them before the text)."""

    main_input_name = "pixel_values"

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = LANGUAGE_MODELS[config.text_config.model_type](config.text_config)
        self.key_map = LANGUAGE_MODEL_KEYS[config.text_config.model_type]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    def _image_prefix(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> Blip2ImageFeatures:
        """Vision and Q-Former outputs, and the projected queries the language model reads (``pooler_output``)."""
        vision = self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        image = vision.last_hidden_state
        qformer = self._read_image(image)
        features = self.language_projection(qformer.last_hidden_state.to(image.dtype))
        return Blip2ImageFeatures(
            last_hidden_state=image, pooler_output=features, vision_outputs=vision, qformer_outputs=qformer
        )

    def merge_image_features(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """Write the image features into the placeholder positions of ``inputs_embeds``."""
        token = self.config.image_token_index
        if token is None:
            raise ValueError("this checkpoint's config has no image_token_index: prompts cannot carry image tokens")
        if input_ids is not None:
            placeholders = input_ids == token
        else:
            placeholders = (inputs_embeds == self.get_input_embeddings().weight[token]).all(-1)
        found, expected = int(placeholders.sum()), features.shape[0] * features.shape[1]
        if found != expected:
            raise ValueError(
                f"the prompt has {found} image tokens (id {token}) but the images give {expected} query features "
                f"({features.shape[1]} per image); process the text with the Blip2Processor"
            )
        return inputs_embeds.masked_scatter(placeholders[..., None], features.to(inputs_embeds.dtype))

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> Blip2ForConditionalGenerationModelOutput:
        """The language model's logits for the prompt (OPT) or for the decoder's input (T5), and with ``labels``
        the loss: OPT's over the last ``labels.shape[1]`` positions, T5's over the decoded labels."""
        image = self._image_prefix(pixel_values, interpolate_pos_encoding)
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("You have to specify input_ids or inputs_embeds")
            inputs_embeds = self.get_input_embeddings()(input_ids)
        inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image.pooler_output)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if self.config.use_decoder_only_language_model:
            out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
            loss = None
            if labels is not None:
                loss = lm_loss(out.logits[:, -labels.shape[1] :].float(), labels, label_smoothing=0.0)
        else:
            out = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                labels=labels,
            )
            loss = out.loss
        return Blip2ForConditionalGenerationModelOutput(
            loss=loss,
            logits=out.logits,
            vision_outputs=image.vision_outputs,
            qformer_outputs=image.qformer_outputs,
            language_model_outputs=out,
        )


class Blip2Model(_Blip2WithLanguageModel):
    """All of BLIP-2 with its feature extractors: the image encoder's, the Q-Former's and the language model's."""

    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        """The image encoder's output (not projected), as the reference returns it."""
        return self.vision_model(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def get_qformer_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The Q-Former's query outputs: (batch, num_query_tokens, qformer width)."""
        return self._image_prefix(pixel_values, interpolate_pos_encoding).qformer_outputs.last_hidden_state

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """The language model's last hidden states for text alone (T5: its encoder's)."""
        if not self.config.use_decoder_only_language_model:
            return BaseModelOutputWithPooling(last_hidden_state=self.language_model.encode(input_ids, attention_mask))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        decoder = self.language_model.decoder
        hidden = decoder(decoder.embed_tokens(input_ids), attention_mask, opt_positions(attention_mask))
        return BaseModelOutputWithPooling(last_hidden_state=hidden)


class Blip2ForConditionalGeneration(GenerationMixin, _Blip2WithLanguageModel):
    """BLIP-2 for captioning and visual question answering: ``generate`` continues the prompt after the image."""

    decoder_part = "language_model"

    def __init__(self, config: Blip2Config) -> None:
        super().__init__(config)
        self.generation_config = GenerationConfig()

    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False
    ) -> Blip2ImageFeatures:
        """The vision output with ``pooler_output`` the projected queries (the language model's image prefix)."""
        return self._image_prefix(pixel_values, interpolate_pos_encoding)

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
        """OPT: ids of the prompt (image placeholders included) followed by the generated text; T5: the decoder's
        ids, from its start token. As the reference returns them. Without ``input_ids`` the prompt is the image
        placeholders and the LM's bos token (OPT) or eos token (T5: what an empty text tokenizes to)."""
        features = self._image_prefix(pixel_values, interpolate_pos_encoding).pooler_output
        text = self.config.text_config
        if input_ids is None:
            end = text.bos_token_id if self.config.use_decoder_only_language_model else _first(text.eos_token_id)
            start = [self.config.image_token_index] * self.config.num_query_tokens + [end]
            input_ids = torch.tensor([start], device=features.device).repeat(features.shape[0], 1)
        if attention_mask is None:  # the reference takes every prompt token as real here
            attention_mask = torch.ones_like(input_ids)
        embeds = self.merge_image_features(input_ids, self.get_input_embeddings()(input_ids), features)
        lm = self.language_model
        if self.config.use_decoder_only_language_model:  # OPT continues the prompt
            make_decoder, max_positions = lm.decoder_factory(embeds), text.max_position_embeddings
        else:  # T5 encodes the prompt and decodes from its start token
            encoded = lm.encode(attention_mask=attention_mask, inputs_embeds=embeds)
            make_decoder, max_positions = lm.decoder_factory(encoded, attention_mask), None
            input_ids, attention_mask = input_ids[:, :0], None
        return self._decode(
            make_decoder, input_ids, attention_mask, lm.special_tokens(), generate_kwargs, generator, max_positions
        )


def _first(token_ids: int | list[int] | None) -> int | None:
    return token_ids[0] if isinstance(token_ids, list) else token_ids
