"""Fixtures for the job tests: tiny models of each task and a folder tree of photographs."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from tests.builders.checkpoints import save_tiny_blips
from tests.conftest import IMAGES


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny_blips(root)
    return root


@pytest.fixture
def photos(tmp_path):
    """A folder tree: 4 photographs at the top, 4 small copies in a subfolder, one corrupt file, one non-image."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, path in enumerate(IMAGES):
        shutil.copy(path, root / f"{i}{path.suffix}")
        Image.open(path).resize((40, 30)).save(root / "sub" / f"small{i}.png")
    (root / "sub" / "broken.jpg").write_bytes(IMAGES[0].read_bytes()[:500])
    (root / "notes.md").write_text("not an image")
    return root
