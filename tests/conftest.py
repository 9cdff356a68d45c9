"""Shared fixtures: the real BERT vocabulary and photographs, and tiny reference checkpoints built on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB = FIXTURES / "bert-base-uncased-vocab.txt"
IMAGES = sorted((FIXTURES / "images").iterdir())


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    return VOCAB


@pytest.fixture(scope="session")
def image_paths() -> list[Path]:
    return IMAGES
