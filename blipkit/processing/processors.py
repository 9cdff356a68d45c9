"""BlipProcessor: an image processor and a tokenizer behind one call, saved and loaded together."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from blipkit.processing.image import IMAGE_OPTIONS, BlipImageProcessor, BlipImageProcessorFast
from blipkit.processing.text import BlipTokenizer


class BlipProcessor:
    """``processor(images=..., text=...)`` -> ``pixel_values``, ``input_ids``, ``attention_mask``.

    Text options (``padding``, ``truncation``, ``max_length``) go to the tokenizer, image options
    (``size``, ``do_resize``, ...) to the image processor.
    """

    def __init__(self, image_processor: BlipImageProcessor, tokenizer: BlipTokenizer) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, use_fast: bool = False, **hub_kwargs: Any
    ) -> BlipProcessor:
        """``use_fast=True`` takes the batched torch image path (``BlipImageProcessorFast``)."""
        image_cls = BlipImageProcessorFast if use_fast else BlipImageProcessor
        return cls(
            image_cls.from_pretrained(name_or_path, **hub_kwargs),
            BlipTokenizer.from_pretrained(name_or_path, **hub_kwargs),
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        directory = Path(save_directory)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "processor_config.json").write_text(
            json.dumps({"processor_class": "BlipProcessor"}, indent=2) + "\n"
        )

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> dict[str, Any]:
        if images is None and text is None:
            raise ValueError("You have to specify either images or text.")
        image_keys = {k: kwargs.pop(k) for k in list(kwargs) if k in IMAGE_OPTIONS}
        out: dict[str, Any] = {}
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors, **image_keys))
        if text is not None:
            out.update(self.tokenizer(text, return_tensors=return_tensors, **kwargs))
        return out

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)
