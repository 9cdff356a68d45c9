"""Model outputs: small frozen dataclasses with the reference's field names.

Like the reference's outputs they can be read by name (``out.logits``, ``out["logits"]``) or by position over
the fields that are set (``out[0]``), so code written for transformers keeps working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the Keras classes return these outputs too, without torch
    import torch


@dataclass(frozen=True)
class ModelOutput:
    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())


@dataclass(frozen=True)
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class BlipOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPoolingAndCrossAttentions | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass(frozen=True)
class BlipForConditionalGenerationModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class BlipTextVisionModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class BlipImageTextMatchingModelOutput(ModelOutput):
    itm_score: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_pooler_output: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    question_embeds: torch.Tensor | None = None


@dataclass(frozen=True)
class Seq2SeqLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None


@dataclass(frozen=True)
class Blip2ImageFeatures(ModelOutput):
    """The vision output, with ``pooler_output`` replaced by the projected query tokens (the LM's image prefix)."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    vision_outputs: BaseModelOutputWithPooling | None = None
    qformer_outputs: Any = None


@dataclass(frozen=True)
class Blip2ForConditionalGenerationModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    vision_outputs: BaseModelOutputWithPooling | None = None
    qformer_outputs: Any = None
    language_model_outputs: Any = None


@dataclass(frozen=True)
class Blip2TextModelOutput(ModelOutput):
    text_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


@dataclass(frozen=True)
class Blip2VisionModelOutput(ModelOutput):
    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


@dataclass(frozen=True)
class Blip2ImageTextMatchingModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: Any = None
    vision_model_output: BaseModelOutputWithPooling | None = None
