"""The devices parity tests run on: the CPU always, CUDA when this machine has it (as litgpt's ``RunIf``)."""

from __future__ import annotations

import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")),
]


def moved(batch: dict, device: str) -> dict:
    """A batch of inputs with its tensors on ``device``."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
