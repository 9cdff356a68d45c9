"""Data sets in the layouts batch jobs read: img2dataset's Parquet and webdataset shards, of the real photographs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.conftest import IMAGES


def img2dataset_parquet(path: Path) -> None:
    """The layout img2dataset writes with output_format=parquet: key, caption and the encoded image in 'jpg'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"key": f"{i:09d}", "caption": f"photo number {i}", "jpg": p.read_bytes()} for i, p in enumerate(IMAGES)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def webdataset_shard(path: Path) -> None:
    """Three photographs, each with a caption in its .txt."""
    files = {}
    for i, image in enumerate(IMAGES[:3]):
        files |= {f"{i:05d}.jpg": image.read_bytes(), f"{i:05d}.txt": f"caption {i}".encode()}
    tar_of(path, files)


def tar_of(path: Path, files: dict[str, bytes]) -> None:
    """A tar archive of ``files`` (name -> contents), in their order: a webdataset shard when names share keys."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
