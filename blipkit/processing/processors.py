"""BlipProcessor: an image processor and a tokenizer behind one call, saved and loaded together."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from blipkit.hub import ModelFiles, read_json
from blipkit.processing.batch import BatchFeature
from blipkit.processing.image import IMAGE_OPTIONS, BlipImageProcessor, BlipImageProcessorFast
from blipkit.processing.text import BlipTokenizer, TextTokenizer, ids_as_tensors


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
        cls, name_or_path: str | os.PathLike | ModelFiles, use_fast: bool = False, **hub_kwargs: Any
    ) -> BlipProcessor:
        """``use_fast=True`` takes the batched torch image path (``BlipImageProcessorFast``)."""
        files = ModelFiles.open(name_or_path, **hub_kwargs)
        image_cls = BlipImageProcessorFast if use_fast else BlipImageProcessor
        return cls(image_cls.from_pretrained(files), BlipTokenizer.from_pretrained(files))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        directory = Path(save_directory)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "processor_config.json").write_text(json.dumps(self.processor_config(), indent=2) + "\n")

    def processor_config(self) -> dict[str, Any]:
        return {"processor_class": type(self).__name__}

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("You have to specify either images or text.")
        image_keys = {k: kwargs.pop(k) for k in list(kwargs) if k in IMAGE_OPTIONS}
        out = BatchFeature()
        if images is not None:
            out.update(self.image_processor(images, return_tensors=return_tensors, **image_keys))
        if text is not None:
            out.update(self.encode_text(text, images is not None, return_tensors, **kwargs))
        return out

    def encode_text(
        self, text: str | list[str], with_images: bool = True, return_tensors: str | None = "pt", **options: Any
    ) -> BatchFeature:
        """``text`` tokenized as it goes with images (``with_images``) or alone; ``options`` are the tokenizer's.
        For pixel values made apart from their texts (batch jobs decode images on other threads)."""
        return self.tokenizer(text, return_tensors=return_tensors, **options)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens)


class Blip2Processor(BlipProcessor):
    """BLIP-2's processor: the BLIP image processor and the language model's tokenizer (GPT-2 BPE for OPT).

    With images, every text is prefixed with ``num_query_tokens`` ``<image>`` tokens (after its padding, as the
    reference does); the model writes the Q-Former's outputs into those positions.
    """

    image_token = "<image>"

    def __init__(
        self, image_processor: BlipImageProcessor, tokenizer: TextTokenizer, num_query_tokens: int | None = None
    ) -> None:
        super().__init__(image_processor, tokenizer)
        self.num_query_tokens = num_query_tokens
        self.image_token_id = tokenizer.add_special_token(self.image_token)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike | ModelFiles, use_fast: bool = False, **hub_kwargs: Any
    ) -> Blip2Processor:
        files = ModelFiles.open(name_or_path, **hub_kwargs)
        image_cls = BlipImageProcessorFast if use_fast else BlipImageProcessor
        config_path = files.get("processor_config.json", required=False)
        config = read_json(config_path) if config_path else {}
        return cls(
            image_cls.from_pretrained(files),
            TextTokenizer.from_pretrained(files),
            num_query_tokens=config.get("num_query_tokens"),
        )

    def processor_config(self) -> dict[str, Any]:
        return {**super().processor_config(), "num_query_tokens": self.num_query_tokens}

    def encode_text(
        self, text: str | list[str], with_images: bool = True, return_tensors: str | None = "pt", **options: Any
    ) -> BatchFeature:
        """With images, every text after ``num_query_tokens`` image placeholders (see the class docstring)."""
        prefix = self.num_query_tokens if with_images and self.num_query_tokens else 0
        if options.get("max_length") is not None:
            options["max_length"] -= prefix  # the budget is for the whole sequence, image tokens included
        encoded = self.tokenizer(text, return_tensors=None, **options)
        if isinstance(text, str):
            encoded = {k: [v] for k, v in encoded.items()}
        fill = {"input_ids": self.image_token_id, "attention_mask": 1}
        encoded = {k: [[fill[k]] * prefix + row for row in rows] for k, rows in encoded.items()}
        return ids_as_tensors(encoded, return_tensors)
