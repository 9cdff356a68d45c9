"""Fixtures for the job tests: tiny models of each task, a folder tree of photographs, tables and shards."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import IMAGES
from tests.parity.test_checkpoints import SAME_WIDTH
from tests.reference import save_reference


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_reference("BlipForConditionalGeneration", root / "caption")
    save_reference("BlipForQuestionAnswering", root / "vqa", **SAME_WIDTH)
    save_reference("BlipForImageTextRetrieval", root / "itm")
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


def img2dataset_parquet(path: Path) -> None:
    """The layout img2dataset writes with output_format=parquet: key, caption and the encoded image in 'jpg'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"key": f"{i:09d}", "caption": f"photo number {i}", "jpg": p.read_bytes()} for i, p in enumerate(IMAGES)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def webdataset_shard(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for i, image in enumerate(IMAGES[:3]):
            for name, data in ((f"{i:05d}.jpg", image.read_bytes()), (f"{i:05d}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
