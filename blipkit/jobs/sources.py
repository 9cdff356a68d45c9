"""Where a job's or a training run's images come from: folders, globs, files, lists of paths, JSONL/CSV/Parquet
tables, webdataset shards.

Every image becomes an ``Item`` with a stable ``id`` (what resuming matches on) and a way to get its bytes or path,
its caption where the source has one (a table's text column, a shard sample's ``.txt``, an image file's same-name
``.txt`` beside it) and the rest of its row. Ids are built from paths as given, so two inputs that are distinct
files never share one. What cannot be read (a damaged shard, a table row without an image, a JSONL line that is
not JSON) becomes an ``Item`` with an ``error``: a failed row, never a silent gap.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    # The rest of a table's row or of a shard sample's .json (question, answers, ...), the image's own column left out.
    columns: dict[str, Any] = field(default_factory=dict, hash=False)
    # Where a table row or shard sample is, for messages ("t.csv row 3 (key 'x')"); empty for an image file or URL,
    # which its id names.
    where: str = ""


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
    if is_url(spec):
        yield Item(spec, spec)
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            yield _image_file(str(file))
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            yield from _from_list(path)
        elif suffix == ".jsonl":
            yield from _from_rows(path, _jsonl_rows(path))
        elif suffix == ".csv":
            yield from _from_rows(path, _csv_rows(path))
        elif suffix == ".parquet":
            yield from _from_rows(path, _parquet_rows(path))
        elif suffix == ".tar":
            yield from _from_tar(path)
        else:
            yield _image_file(str(path))
    elif any(ch in spec for ch in "*?["):
        for match in sorted(glob.glob(spec, recursive=True)):
            yield from _expand(match)
    else:
        raise SourceError(f"input not found: {spec}")


def is_url(spec: str) -> bool:
    """Whether an input, or a path in a list or table, is an http(s) URL: read as it is, never resolved."""
    return spec.startswith(("http://", "https://"))


def _resolve(base: Path, entry: str) -> str:
    """A path or URL from a list or table: relative paths are relative to the list's or table's folder."""
    return entry if is_url(entry) or entry.startswith("/") else str(base / entry)


def _image_file(path: str) -> Item:
    """An image file, with its caption from the same-name ``.txt`` beside it (``a.jpg`` + ``a.txt``: the layout
    diffusion trainers use) where there is one."""
    caption = Path(path).with_suffix(".txt")
    return Item(path, path, caption.read_text(encoding="utf-8", errors="replace") if caption.is_file() else None)


def _from_list(path: Path) -> Iterator[Item]:
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            resolved = _resolve(path.parent, entry)
            yield Item(resolved, resolved) if is_url(resolved) else _image_file(resolved)


# A table reader gives (where in the file, row): the row as a dict, or a text saying why that line is no row.
Rows = Iterator[tuple[str, dict[str, Any] | str]]


def _jsonl_rows(path: Path) -> Rows:
    """One row a non-blank line; each line is decoded on its own, so a damaged one is one failed row."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.rstrip(b"\r\n").decode("utf-8"))
            except UnicodeDecodeError as error:
                row = f"is not UTF-8 text ({error.reason} at byte {error.start + 1})"
            except json.JSONDecodeError as error:
                row = f"is not JSON: {error.msg} (column {error.colno})"
            else:
                row = row if isinstance(row, dict) else f"is a JSON {_json_kind(row)}, not an object"
            yield f"line {number}", row


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _csv_rows(path: Path) -> Rows:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _check_image_column(path, reader.fieldnames or [])
        for index, row in enumerate(reader):
            yield f"row {index}", row


def _parquet_rows(path: Path) -> Rows:
    pq = require_pyarrow().parquet
    table = pq.ParquetFile(path)
    _check_image_column(path, table.schema_arrow.names)
    index = 0
    for batch in table.iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield f"row {index}", row
            index += 1


def _check_image_column(path: Path, names: list[str]) -> None:
    """CSV and Parquet tables have one set of columns: one without an image column is the wrong file."""
    if not any(name in names for name in BYTES_COLUMNS + PATH_COLUMNS):
        raise SourceError(
            f"{path} has no image column: expected one of {', '.join(BYTES_COLUMNS + PATH_COLUMNS)}; "
            f"found {', '.join(names) or 'no columns'}"
        )


def _from_rows(path: Path, rows: Rows) -> Iterator[Item]:
    ids: set[str] = set()
    for index, (place, row) in enumerate(rows):
        if isinstance(row, str):
            where = f"{path} {place}"
            yield Item(_unique_id(f"{path}:{index}", index, ids), "", error=f"{where} {row}", where=where)
            continue
        # Columns are looked up row by row: a JSONL file's lines need not share their keys.
        bytes_column, path_column, key_column, text_column = _columns(row)
        key = str(row[key_column]) if key_column and row.get(key_column) is not None else str(index)
        item_id = _unique_id(f"{path}:{key}", index, ids)
        where = f"{path} {place}" + ("" if key == str(index) else f" (key {key!r})")
        text = row.get(text_column) if text_column else None
        columns = {name: value for name, value in row.items() if name not in (bytes_column, path_column)}
        image = _image_in(path.parent, row.get(bytes_column), row.get(path_column))
        if image is not None:
            yield Item(item_id, image, text, columns=columns, where=where)
        else:
            empty = [repr(c) for c in (bytes_column, path_column) if c]
            if not empty:
                expected, found = ", ".join(BYTES_COLUMNS + PATH_COLUMNS), ", ".join(row)
                what = f"none of its columns is an image column (expected one of {expected}; found {found})"
            elif len(empty) > 1:
                what = f"its image columns {' and '.join(empty)} are empty"
            else:
                what = f"its column {empty[0]} is empty"
            yield Item(item_id, "", text, error=f"{where} has no image: {what}", columns=columns, where=where)


def _image_in(base: Path, encoded: Any, path: Any) -> str | bytes | None:
    """A row's image from its bytes column (``encoded``) or else its path column; None when both are empty. A text
    in a bytes column (a JSONL ``image``, a CSV's every value) is a path."""
    for value in (encoded, path):
        if isinstance(value, dict):  # Hugging Face datasets' Image struct
            value = value.get("bytes") or value.get("path")
        if isinstance(value, bytes) and value:
            return value
        if value is not None and not isinstance(value, bytes) and str(value).strip():
            return _resolve(base, str(value).strip())
    return None


def _unique_id(candidate: str, position: int, ids: set[str]) -> str:
    """``candidate``, or, when an earlier row or sample of the same file already took it (a repeated key),
    ``candidate#POSITION``: the position in the file is unique there, and the same on every run."""
    while candidate in ids:
        candidate = f"{candidate}#{position}"
    ids.add(candidate)
    return candidate


def _columns(row: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """The row's bytes, path, key and text columns: the first of each kind's names that it has."""

    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in row), None)

    return first(BYTES_COLUMNS), first(PATH_COLUMNS), first(KEY_COLUMNS), first(TEXT_COLUMNS)


def _from_tar(path: Path) -> Iterator[Item]:
    """webdataset shards: consecutive files sharing a key (``000001.jpg``, ``000001.txt``, ``000001.json``, ...) are
    one sample: an image, maybe a caption (its ``.txt``, else a text column of its ``.json``), and the ``.json``'s
    other fields. A damaged shard gives the samples read before the damage, then a failed item for the shard itself
    (id: its path), saying why the rest is missing."""
    members, damage = _read_shard(path)
    ids: set[str] = set()
    for position, (key, files) in enumerate(_group_samples(members)):
        item_id = _unique_id(f"{path}/{key}", position, ids)
        where = f"{path} sample {key!r}"
        image = next((files[e] for e in WEBDATASET_IMAGES if e in files), None)
        columns, bad_json = _sample_json(files.get("json"))
        text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
        text = files["txt"].decode("utf-8", errors="replace") if "txt" in files else columns.get(text_column)
        if image is None:
            found = ", ".join(f"{key}.{e}" for e in files)
            expected = ", ".join(f".{e}" for e in WEBDATASET_IMAGES)
            error = f"{path}: sample {key!r} has no image ({expected}); found {found}"
        else:
            error = f"{path}: sample {key!r} has a {key}.json that {bad_json}" if bad_json else None
        yield Item(item_id, "" if error else image, text, error=error, columns=columns, where=where)
    if damage:
        yield Item(str(path), "", error=damage)


def _sample_json(data: bytes | None) -> tuple[dict[str, Any], str | None]:
    """A sample's ``.json`` as a dict, or an empty one and what is wrong with it."""
    if data is None:
        return {}, None
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return {}, f"is not JSON: {first_line(error)}"
    return (value, None) if isinstance(value, dict) else ({}, f"is a JSON {_json_kind(value)}, not an object")


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
