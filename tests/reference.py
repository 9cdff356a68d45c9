"""Tiny random reference (transformers) BLIP models, saved in the Hugging Face layout, for parity tests."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from tests.conftest import VOCAB

IMAGE_SIZE = 32
TINY_BLIP = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 40,
    },
    # A vision width unlike the text width checks that cross-attention reads the image width.
    "vision_config": {
        "hidden_size": 48,
        "intermediate_size": 56,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
    },
    "projection_dim": 16,
    "image_text_hidden_size": 24,
}


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its initial value so no layer norm is 1 and no bias is 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def reference_config(**overrides):
    import transformers

    settings = {**TINY_BLIP, **overrides}
    return transformers.BlipConfig(**settings)


@functools.cache
def reference_tokenizer():
    import transformers

    return transformers.BertTokenizer(
        vocab=str(VOCAB), bos_token="[DEC]", additional_special_tokens=["[ENC]"], model_max_length=512
    )


def reference_processor(size: int = IMAGE_SIZE):
    import transformers

    image_processor = transformers.BlipImageProcessorPil(size={"height": size, "width": size})
    return transformers.BlipProcessor(image_processor=image_processor, tokenizer=reference_tokenizer())


def save_reference(class_name: str, directory: Path, seed: int = 0, **config_overrides):
    """Build, perturb and save a reference model with its processor; return the model (eval mode)."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(reference_config(**config_overrides))
    perturb_(model, seed)
    model.eval()
    model.save_pretrained(directory)
    reference_processor().save_pretrained(directory)
    return model
