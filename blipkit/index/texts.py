"""Where a text index's texts come from: a ``.txt`` file (one text a line) or a CSV/Parquet table's text column."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from blipkit.jobs.sources import KEY_COLUMNS, TEXT_COLUMNS, SourceError, require_pyarrow


def iter_texts(inputs: list[str]) -> Iterator[tuple[str, str, str]]:
    """(id, text, source) for every non-blank text: ids are ``FILE:LINE`` (from 1) for a ``.txt``, ``TABLE:KEY``
    (its key/id column, else the row from 0) for a table - FILE and TABLE as absolute paths."""
    for spec in inputs:
        path = Path(os.path.abspath(spec))
        if not path.is_file():
            raise SourceError(f"text input not found: {spec}")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            yield from ((f"{path}:{n}", line.strip(), str(path)) for n, line in enumerate(lines, 1) if line.strip())
        elif suffix in (".csv", ".parquet"):
            yield from _from_table(path)
        else:
            raise SourceError(f"cannot read texts from {spec}: give a .txt (one text a line), .csv or .parquet")


def _from_table(path: Path) -> Iterator[tuple[str, str, str]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = require_pyarrow().parquet.read_table(path).to_pylist()
    if not rows:
        return
    text_column = next((c for c in TEXT_COLUMNS if c in rows[0]), None)
    if text_column is None:
        expected, found = ", ".join(TEXT_COLUMNS), ", ".join(rows[0])
        raise SourceError(f"{path} has no text column: expected one of {expected}; found {found}")
    key_column = next((c for c in KEY_COLUMNS if c in rows[0]), None)
    for index, row in enumerate(rows):
        text = str(row[text_column] or "").strip()
        if text:
            key = row[key_column] if key_column and row.get(key_column) is not None else index
            yield f"{path}:{key}", text, str(path)
