"""Where a job's images come from: folders, globs, files, lists of paths, Parquet/CSV tables, webdataset shards.

Every image becomes an ``Item`` with a stable ``id`` (what resuming matches on) and a way to get its bytes or path.
Ids are built from paths as given, so two inputs that are distinct files never share one. What cannot be read
(a damaged shard, a table row without an image) becomes an ``Item`` with an ``error``: a failed row, never a
silent gap.
"""

from __future__ import annotations

import csv
import glob
import os
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
WEBDATASET_IMAGES = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Item:
    """One image of a job: ``image`` is a path/URL string or the encoded bytes; ``text`` a caption if the source
    has one."""

    id: str
    image: str | bytes
    text: str | None = None
    error: str | None = None  # why the source could not give this image; it becomes a failed row


class SourceError(ValueError):
    """An input that names no images, or a table without an image column."""


def input_list(inputs: str | os.PathLike | list[str | os.PathLike]) -> list[str]:
    """A job's ``inputs`` argument (one input, or a list of them) as a list of strings."""
    return [str(i) for i in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]


def iter_items(inputs: list[str]) -> Iterator[Item]:
    """Every image named by ``inputs``, in a stable order, each id once: distinct inputs have distinct ids, so only
    the same input named twice (a folder and a file in it, a shard listed twice) is read once."""
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
    ids: set[str] = set()
    for index, row in enumerate(rows):
        if columns is None:
            columns = _columns(path, row)
        bytes_column, path_column, key_column, text_column = columns
        key = str(row[key_column]) if key_column and row.get(key_column) is not None else str(index)
        item_id = _unique_id(f"{path}:{key}", index, ids)
        text = row.get(text_column) if text_column else None
        if bytes_column and row.get(bytes_column) is not None:
            image = row[bytes_column]
            image = image["bytes"] if isinstance(image, dict) else image  # Hugging Face datasets' Image struct
            yield Item(item_id, image, text)
        elif path_column and str(row.get(path_column) or "").strip():
            value = str(row[path_column]).strip()
            image = value if value.startswith(("http://", "https://", "/")) else str(path.parent / value)
            yield Item(item_id, image, text)
        else:
            where = f"row {index}" if key == str(index) else f"row {index} (key {key!r})"
            empty = [repr(c) for c in (bytes_column, path_column) if c]
            what = f"its image columns {' and '.join(empty)} are" if len(empty) > 1 else f"its column {empty[0]} is"
            yield Item(item_id, "", text, error=f"{path} {where} has no image: {what} empty")


def _unique_id(candidate: str, position: int, ids: set[str]) -> str:
    """``candidate``, or, when an earlier row or sample of the same file already took it (a repeated key),
    ``candidate#POSITION``: the position in the file is unique there, and the same on every run."""
    while candidate in ids:
        candidate = f"{candidate}#{position}"
    ids.add(candidate)
    return candidate


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
    """webdataset shards: consecutive files sharing a key (``000001.jpg``, ``000001.txt``, ...) are one sample, an
    image and maybe a caption. A damaged shard gives the samples read before the damage, then a failed item for
    the shard itself (id: its path), saying why the rest is missing."""
    members, damage = _read_shard(path)
    ids: set[str] = set()
    for position, (key, files) in enumerate(_group_samples(members)):
        item_id = _unique_id(f"{path}/{key}", position, ids)
        image = next((files[e] for e in WEBDATASET_IMAGES if e in files), None)
        text = files.get("txt", b"").decode("utf-8", errors="replace") or None
        if image is not None:
            yield Item(item_id, image, text)
        else:
            found = ", ".join(f"{key}.{e}" for e in files)
            expected = ", ".join(f".{e}" for e in WEBDATASET_IMAGES)
            yield Item(item_id, "", text, error=f"{path}: sample {key!r} has no image ({expected}); found {found}")
    if damage:
        yield Item(str(path), "", error=damage)


def _read_shard(path: Path) -> tuple[list[tuple[str, bytes]], str | None]:
    """Every file of the archive up to any damage, and what is wrong with it (None when it is whole)."""
    if not tarfile.is_tarfile(path):
        return [], f"{path} is not a tar archive (nor a compressed one)"
    members: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    members.append((member.name, tar.extractfile(member).read()))
            whole = _ends_with_zero_block(tar)
    except (tarfile.TarError, EOFError, OSError) as error:  # cut short, or a compressed stream ended early
        damage = first_line(error)
    else:
        if whole:
            return members, None
        damage = "cut short (no end-of-archive block)"
    where = f"after {len(members)} files (the last {members[-1][0]!r})" if members else "before its first file"
    return members, f"{path} is a damaged tar archive: {damage} {where}; the rest is unread"


def _ends_with_zero_block(tar: tarfile.TarFile) -> bool:
    """tarfile reads a file cut exactly between two members as a whole archive; a whole one ends in a zero block."""
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(tarfile.BLOCKSIZE)
    return len(end) == tarfile.BLOCKSIZE and not any(end)


def _group_samples(members: list[tuple[str, bytes]]) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; a key that comes back later, or an extension that repeats, starts a new
    sample instead of overwriting one."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    for name, data in members:
        # webdataset's rule: the key is the folder and the file name up to its first dot
        folder, _, file_name = name.rpartition("/")
        stem, _, extension = file_name.partition(".")
        key, extension = f"{folder}/{stem}" if folder else stem, extension.lower()
        if not samples or samples[-1][0] != key or extension in samples[-1][1]:
            samples.append((key, {}))
        samples[-1][1][extension] = data
    return samples


def first_line(error: BaseException) -> str:
    """The first line of an error's message (tarfile and pyarrow write several)."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - the submodule must be loaded
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'blipkit[jobs]'") from None
    return pyarrow
