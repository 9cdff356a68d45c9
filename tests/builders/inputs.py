"""Sample inputs for the tiny models: padded batches of ids, masks and pixel values, fixed by seeds."""

from __future__ import annotations

import torch

from tests.builders.configs import EOS, IMAGE_TOKEN, QUERIES
from tests.reference import IMAGE_SIZE


def sample_inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "input_ids": torch.tensor([[101, 1037, 4937, 102, 0], [101, 2054, 2003, 2023, 102]])[:batch],
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])[:batch],
    }


def prompt_inputs():
    """Two images; prompts of 4 image tokens then text, the second left-padded by one."""
    image = [IMAGE_TOKEN] * QUERIES
    ids = torch.tensor([image + [2, 15, 27, 33], [1] + image + [2, 44, 12]])
    mask = torch.tensor([[1] * 8, [0] + [1] * 7])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}


def encoder_inputs():
    """Two texts, the second right-padded by three."""
    ids = torch.randint(2, 99, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def blip2_inputs():
    """Two images; prompts of 4 image tokens, text and </s>; the second left-padded by one (pad is 0)."""
    image = [IMAGE_TOKEN] * QUERIES
    ids = torch.tensor([image + [5, 6, 7, EOS], [0] + image + [8, 9, EOS]])
    mask = torch.tensor([[1] * 8, [0] + [1] * 7])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
