"""What generating models share: ``can_generate``, a ``generation_config``, and how a call's settings meet it."""

from __future__ import annotations

from typing import Any

import torch

from blipkit.generation import search
from blipkit.generation.config import GenerationConfig
from blipkit.generation.search import Generators


class GenerationMixin:
    """A model whose ``generate`` reads its context (image tokens, a question, an encoded prompt), then runs
    blipkit's search over a decoder that one of its language models makes (``decoder_factory``)."""

    can_generate = True
    generation_config: GenerationConfig

    def _decode(
        self,
        make_decoder: search.DecoderFactory,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        special_tokens: dict[str, Any],
        generate_kwargs: dict[str, Any],
        generator: Generators,
        max_positions: int | None = None,
    ) -> torch.Tensor:
        """Token ids from ``input_ids`` on (an empty prompt: from the decoder's start token). The language model's
        special tokens override ``generation_config`` - as the reference's do, whatever a checkpoint's
        generation_config.json says - and the caller's keywords override both."""
        config = self.generation_config.updated(**special_tokens).updated(**generate_kwargs)
        return search.generate(make_decoder, input_ids, attention_mask, config, max_positions, generator=generator)
