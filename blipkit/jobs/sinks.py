"""Where a job's results go: JSON lines, CSV, Parquet or .npy, written so that a killed job can resume.

Every batch is appended as complete lines and fsynced before the next starts, so a kill loses at most the batch in
flight. A line cut short by a kill is removed when the file is reopened, so no half record survives, and the ids
already written are skipped, so none is written twice. Parquet and .npy cannot be appended to: their rows go to a
JSON-lines journal beside them (``OUT.partial.jsonl``) that becomes the final file when the job completes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._records = _read_complete_lines(path)
        self._file = path.open("a", encoding="utf-8")

    def done_ids(self) -> set[str]:
        return {json.loads(line)["id"] for line in self._records}

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._records]

    def write(self, records: list[dict[str, Any]]) -> None:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        _append_durably(self._file, "".join(lines))
        self._records += lines

    def close(self, complete: bool) -> None:
        self._file.close()


class CsvSink:
    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.path, self.fields = path, fields
        lines = _read_complete_lines(path)
        self._done = {row["id"] for row in csv.DictReader(lines)} if lines else set()
        self._file = path.open("a", encoding="utf-8", newline="")
        if not lines:
            self._write_rows([dict(zip(fields, fields, strict=True))])

    def done_ids(self) -> set[str]:
        return self._done

    def write(self, records: list[dict[str, Any]]) -> None:
        self._write_rows(records)

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
        writer.writerows(rows)
        _append_durably(self._file, buffer.getvalue())

    def close(self, complete: bool) -> None:
        self._file.close()


class JournalSink:
    """Rows go to ``OUT.partial.jsonl``; on completion they join the final file's rows and replace it atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = JsonlSink(path.with_name(path.name + ".partial.jsonl"))
        self._final = self.read_final() if path.exists() else []

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self._final} | self.journal.done_ids()

    def write(self, records: list[dict[str, Any]]) -> None:
        self.journal.write(records)

    def close(self, complete: bool) -> None:
        self.journal.close(complete)
        if not complete:
            return  # the journal stays; the next run picks it up
        rows = self._final + self.journal.records()
        temporary = self.path.with_name(self.path.name + ".tmp")
        self.write_final(rows, temporary)
        os.replace(temporary, self.path)
        self.journal.path.unlink()

    def read_final(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def write_final(self, rows: list[dict[str, Any]], path: Path) -> None:
        raise NotImplementedError


class ParquetSink(JournalSink):
    def read_final(self) -> list[dict[str, Any]]:
        from blipkit.jobs.sources import require_pyarrow

        return require_pyarrow().parquet.read_table(self.path).to_pylist()

    def write_final(self, rows: list[dict[str, Any]], path: Path) -> None:
        from blipkit.jobs.sources import require_pyarrow

        pa = require_pyarrow()
        pa.parquet.write_table(pa.Table.from_pylist(rows), path)


class NpySink(JournalSink):
    """Embeddings of the successful rows in ``OUT.npy`` (rows, dim); every row's id and status, and its row in
    the array, in ``OUT.jsonl`` beside it."""

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(".jsonl")

    def read_final(self) -> list[dict[str, Any]]:
        embeddings = np.load(self.path)
        rows = [json.loads(line) for line in self.index_path.read_text(encoding="utf-8").splitlines()]
        for row in rows:
            row["embedding"] = embeddings[row.pop("row")].tolist() if row.get("row") is not None else None
        return rows

    def write_final(self, rows: list[dict[str, Any]], path: Path) -> None:
        vectors, index = [], []
        for row in rows:
            entry = {k: v for k, v in row.items() if k != "embedding"}
            entry["row"] = len(vectors) if row.get("embedding") is not None else None
            if row.get("embedding") is not None:
                vectors.append(row["embedding"])
            index.append(json.dumps(entry, ensure_ascii=False) + "\n")
        with path.open("wb") as f:
            np.save(f, np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1))
        temporary = self.index_path.with_name(self.index_path.name + ".tmp")
        temporary.write_text("".join(index), encoding="utf-8")
        os.replace(temporary, self.index_path)


def open_sink(path: str | os.PathLike, fields: tuple[str, ...]):
    """The sink for ``path``'s format; ``fields`` are the CSV columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return JsonlSink(path)
    if suffix == ".csv":
        return CsvSink(path, fields)
    if suffix == ".parquet":
        return ParquetSink(path)
    if suffix == ".npy":
        return NpySink(path)
    raise ValueError(f"cannot write {path}: the output must end in .jsonl, .csv, .parquet or .npy")


def _read_complete_lines(path: Path) -> list[str]:
    """The file's complete lines; a last line cut short (a kill mid-write) is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return data[:end].decode("utf-8").splitlines(keepends=True)


def _append_durably(file: io.TextIOBase, text: str) -> None:
    file.write(text)
    file.flush()
    os.fsync(file.fileno())
