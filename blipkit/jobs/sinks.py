"""Where a job's results go: JSON lines, CSV, Parquet or .npy, written so that a killed job can resume.

Every batch is appended as complete lines and fsynced before the next starts, so a kill loses at most the batch in
flight. A line cut short by a kill is removed when the file is reopened, so no half record survives, and the ids
already written are skipped, so none is written twice. Parquet and .npy cannot be appended to: their rows go to a
JSON-lines journal beside them (``OUT.partial.jsonl``) that becomes the final file when the job completes.
An existing output that is not a job's rows is named with what was expected, never half-read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from blipkit.jobs.sources import first_line, require_pyarrow

# What each task's rows fit in: .npy holds only vectors, and a CSV cell has no place for one.
EMBEDDING_FORMATS = (".npy", ".parquet", ".jsonl")
ROW_FORMATS = (".jsonl", ".csv", ".parquet")
START_AFRESH = "add --overwrite (overwrite=True in Python) to start afresh, or choose another output"


class OutputError(ValueError):
    """An output a job cannot write or resume: the message names the file and what to do."""


def check_format(path: str | os.PathLike, task: str) -> None:
    """Refuse an output format the task's rows do not fit in, before any work is done."""
    formats = EMBEDDING_FORMATS if task == "embed" else ROW_FORMATS
    if Path(path).suffix.lower() not in formats:
        raise OutputError(f"cannot write {path}: {task} jobs write {', '.join(formats[:-1])} or {formats[-1]}")


def make_parent(path: Path) -> None:
    """Create the output's folder, naming a file that stands where a folder must be."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; --out names a file")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"cannot write {path}: {blocking} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial.jsonl")


def output_files(path: Path) -> list[Path]:
    """The files that hold ``path``'s rows: the output, its journal (Parquet, .npy and grouped outputs write one),
    and .npy's index."""
    if path.suffix.lower() == ".npy":
        return [path, NpySink.index_path_of(path), journal_path(path)]
    return [path, journal_path(path)]


class JsonlSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._records = _parse_records(path, _read_complete_lines(path))
        self._file = path.open("a", encoding="utf-8")

    def done_ids(self) -> set[str]:
        return {record["id"] for record in self._records}

    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def write(self, records: list[dict[str, Any]]) -> None:
        _append_durably(self._file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._records += records

    def close(self, complete: bool) -> None:
        self._file.close()


class CsvSink:
    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.path, self.fields = path, fields
        lines = _read_complete_lines(path)
        self._done = _csv_ids(path, lines, fields) if lines else set()
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
        self.journal = JsonlSink(journal_path(path))
        self._final = self.read_final() if path.exists() else []

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self._final} | self.journal.done_ids()

    def write(self, records: list[dict[str, Any]]) -> None:
        self.journal.write(records)

    def close(self, complete: bool) -> None:
        self.journal.close(complete)
        if not complete:
            return  # the journal stays; the next run picks it up
        rows = self._final + self.final_rows(self.journal.records())
        temporary = self.path.with_name(self.path.name + ".tmp")
        self.write_final(rows, temporary)
        os.replace(temporary, self.path)
        self.journal.path.unlink()

    def final_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The final file's rows for the journal's records: the same, unless records are groups of rows."""
        return records

    def read_final(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def write_final(self, rows: list[dict[str, Any]], path: Path) -> None:
        raise NotImplementedError


class ParquetSink(JournalSink):
    def read_final(self) -> list[dict[str, Any]]:
        return read_parquet_rows(self.path)

    def write_final(self, rows: list[dict[str, Any]], path: Path) -> None:
        pa = require_pyarrow()
        pa.parquet.write_table(pa.Table.from_pylist(rows), path)


class NpySink(JournalSink):
    """Embeddings of the successful rows in ``OUT.npy`` (rows, dim); every row's id and status, and its row in
    the array, in ``OUT.jsonl`` beside it."""

    @staticmethod
    def index_path_of(path: Path) -> Path:
        return path.with_suffix(".jsonl")

    @property
    def index_path(self) -> Path:
        return self.index_path_of(self.path)

    def read_final(self) -> list[dict[str, Any]]:
        try:
            embeddings = np.load(self.path)
        except (ValueError, OSError) as error:
            raise OutputError(f"{self.path} is not a .npy array ({first_line(error)}); {START_AFRESH}") from None
        if not self.index_path.exists():
            raise OutputError(f"{self.path} has no index {self.index_path} beside it; {START_AFRESH}")
        rows = _parse_records(self.index_path, _read_complete_lines(self.index_path))
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


class GroupedRows:
    """For jobs that give each image several rows (CapFilt: one per caption): the journal keeps one record per
    image, its rows under ``rows``, so an image is written whole or not at all and a resume never finds half of
    one; the final file has a row each, the image's ``id``, ``status`` and ``error`` on every one."""

    fields: tuple[str, ...]

    def final_rows(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        blank = dict.fromkeys(self.fields[3:])  # a failed image: one row, its columns empty
        return [
            {"id": record["id"], "status": record["status"], "error": record["error"], **blank, **row}
            for record in records
            for row in record.get("rows") or [{}]
        ]


class GroupedJsonlSink(GroupedRows, JournalSink):
    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.fields = fields
        super().__init__(path)

    def read_final(self) -> list[dict[str, Any]]:
        return read_jsonl_rows(self.path)

    def write_final(self, rows: list[dict[str, Any]], path: Path) -> None:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


class GroupedCsvSink(GroupedRows, JournalSink):
    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.fields = fields
        super().__init__(path)

    def read_final(self) -> list[dict[str, Any]]:
        return read_csv_rows(self.path, self.fields)

    def write_final(self, rows: list[dict[str, Any]], path: Path) -> None:
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


class GroupedParquetSink(GroupedRows, ParquetSink):
    def __init__(self, path: Path, fields: tuple[str, ...]) -> None:
        self.fields = fields
        super().__init__(path)


def open_grouped_sink(path: Path, fields: tuple[str, ...]) -> JournalSink:
    """The sink for a job whose records are groups of rows (``GroupedRows``), by ``path``'s format."""
    sinks = {".jsonl": GroupedJsonlSink, ".csv": GroupedCsvSink, ".parquet": GroupedParquetSink}
    return sinks[path.suffix.lower()](path, fields)


def read_rows(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of a finished output in any row format (CSV's cells read back as strings)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv_rows(path, fields)
    return read_parquet_rows(path) if suffix == ".parquet" else read_jsonl_rows(path)


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    return _parse_records(path, _read_complete_lines(path))


def read_csv_rows(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    lines = _read_complete_lines(path)
    _csv_ids(path, lines, fields)  # refuses another table's columns
    return list(csv.DictReader(lines))


def read_parquet_rows(path: Path) -> list[dict[str, Any]]:
    pa = require_pyarrow()
    try:
        table = pa.parquet.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise OutputError(f"{path} is not a Parquet file ({first_line(error)}); {START_AFRESH}") from None
    if "id" not in table.column_names:
        raise OutputError(f"{path} has no 'id' column, so it is not a job's output; {START_AFRESH}")
    return table.to_pylist()


# What a job writes its records to.
Sink = JsonlSink | CsvSink | JournalSink


def open_sink(path: Path, fields: tuple[str, ...]) -> JsonlSink | CsvSink | JournalSink:
    """The sink for ``path``'s format (checked by ``check_format``); ``fields`` are the CSV columns."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return CsvSink(path, fields)
    return {".jsonl": JsonlSink, ".parquet": ParquetSink, ".npy": NpySink}[suffix](path)


def _read_complete_lines(path: Path) -> list[str]:
    """The file's complete lines; a last line cut short (a kill mid-write) is removed from the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    try:
        lines = data[:end].decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        raise OutputError(f"{path} is not a text file, so it is not a job's output; {START_AFRESH}") from None
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return lines


def _parse_records(path: Path, lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "id" not in record:
            raise OutputError(
                f"{path} line {number} is not a job's row: expected JSON lines, each an object with an 'id' field; "
                + START_AFRESH
            )
        records.append(record)
    return records


def _csv_ids(path: Path, lines: list[str], fields: tuple[str, ...]) -> set[str]:
    reader = csv.DictReader(lines)
    if tuple(reader.fieldnames or ()) != fields:
        raise OutputError(
            f"{path} has the columns {', '.join(reader.fieldnames or ())}; this job writes {', '.join(fields)}; "
            + START_AFRESH
        )
    return {row["id"] for row in reader}


def _append_durably(file: io.TextIOBase, text: str) -> None:
    file.write(text)
    file.flush()
    os.fsync(file.fileno())
