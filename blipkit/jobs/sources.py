"""Where a job's images come from: folders, globs, files, lists of paths, Parquet/CSV tables, webdataset shards.

Every image becomes an ``Item`` with a stable ``id`` (what resuming matches on) and a way to get its bytes or path.
"""

from __future__ import annotations

import csv
import glob
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Column names img2dataset and common data sets use.
PATH_COLUMNS = ("path", "image_path", "file", "filename", "url")
BYTES_COLUMNS = ("jpg", "image", "png", "webp", "bytes", "image_bytes")
TEXT_COLUMNS = ("caption", "text", "txt")
KEY_COLUMNS = ("key", "id")


@dataclass(frozen=True)
class Item:
    """One image of a job: ``image`` is a path/URL string or the encoded bytes; ``text`` a caption if the source
    has one."""

    id: str
    image: str | bytes
    text: str | None = None


class SourceError(ValueError):
    """An input that names no images, or a table without an image column."""


def iter_items(inputs: list[str]) -> Iterator[Item]:
    """Every image named by ``inputs``, in a stable order, each id once."""
    seen: set[str] = set()
    for spec in inputs:
        found = False
        for item in _expand(spec):
            found = True
            if item.id not in seen:
                seen.add(item.id)
                yield item
        if not found:
            raise SourceError(f"{spec} names no images")


def _expand(spec: str) -> Iterator[Item]:
    path = Path(spec)
    if spec.startswith(("http://", "https://")):
        yield Item(spec, spec)
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            yield Item(str(file), str(file))
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            yield from _from_list(path)
        elif suffix == ".csv":
            yield from _from_rows(path, _csv_rows(path))
        elif suffix == ".parquet":
            yield from _from_rows(path, _parquet_rows(path))
        elif suffix == ".tar":
            yield from _from_tar(path)
        else:
            yield Item(str(path), str(path))
    elif any(ch in spec for ch in "*?["):
        for match in sorted(glob.glob(spec, recursive=True)):
            yield from _expand(match)
    else:
        raise SourceError(f"input not found: {spec}")


def _from_list(path: Path) -> Iterator[Item]:
    base = path.parent
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            resolved = entry if entry.startswith(("http://", "https://", "/")) else str(base / entry)
            yield Item(resolved, resolved)


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    pq = require_pyarrow().parquet
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        yield from batch.to_pylist()


def _from_rows(path: Path, rows: Iterator[dict[str, Any]]) -> Iterator[Item]:
    columns = None
    for index, row in enumerate(rows):
        if columns is None:
            columns = _columns(path, row)
        bytes_column, path_column, key_column, text_column = columns
        key = str(row[key_column]) if key_column and row.get(key_column) is not None else str(index)
        text = row.get(text_column) if text_column else None
        if bytes_column and row.get(bytes_column) is not None:
            image = row[bytes_column]
            image = image["bytes"] if isinstance(image, dict) else image  # Hugging Face datasets' Image struct
        else:
            value = str(row.get(path_column) or "")
            image = value if value.startswith(("http://", "https://", "/")) else str(path.parent / value)
        yield Item(f"{path.name}:{key}", image, text)


def _columns(path: Path, row: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in row), None)

    bytes_column, path_column = first(BYTES_COLUMNS), first(PATH_COLUMNS)
    if bytes_column is None and path_column is None:
        raise SourceError(
            f"{path} has no image column: expected one of {', '.join(BYTES_COLUMNS + PATH_COLUMNS)}; "
            f"found {', '.join(row)}"
        )
    return bytes_column, path_column, first(KEY_COLUMNS), first(TEXT_COLUMNS)


def _from_tar(path: Path) -> Iterator[Item]:
    """webdataset shards: files grouped by key (``000001.jpg``, ``000001.txt``, ...), an image and maybe a caption."""
    with tarfile.open(path) as tar:
        samples: dict[str, dict[str, bytes]] = {}
        order: list[str] = []
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            if key not in samples:
                samples[key] = {}
                order.append(key)
            samples[key][extension.lower()] = tar.extractfile(member).read()
    for key in order:
        files = samples[key]
        image = next((files[e] for e in ("jpg", "jpeg", "png", "webp") if e in files), None)
        if image is not None:
            text = files.get("txt", b"").decode("utf-8") or None
            yield Item(f"{path.name}/{key}", image, text)


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule must be loaded
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'blipkit[jobs]'") from None
    return pyarrow
