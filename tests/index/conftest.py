"""Fixtures for the index tests: tiny BLIP and BLIP-2 retrieval checkpoints, and a folder of photographs."""

from __future__ import annotations

import shutil

import pytest

from tests.builders.checkpoints import save_tiny_blip2s
from tests.conftest import IMAGES
from tests.reference import save_reference


@pytest.fixture(scope="session")
def retrieval_models(tmp_path_factory):
    """{"blip": dir, "blip-2": dir, "other": dir} - "other" is a second BLIP, of other weights."""
    root = tmp_path_factory.mktemp("retrieval")
    save_reference("BlipForImageTextRetrieval", root / "blip")
    save_reference("BlipForImageTextRetrieval", root / "other", seed=1)
    return {"blip": root / "blip", "blip-2": save_tiny_blip2s(root / "blip2")["itm"], "other": root / "other"}


@pytest.fixture
def photos(tmp_path):
    """The four photographs under their own names, and one corrupt file."""
    root = tmp_path / "photos"
    root.mkdir()
    for path in IMAGES:
        shutil.copy(path, root / path.name)
    (root / "broken.jpg").write_bytes(IMAGES[0].read_bytes()[:500])
    return root
