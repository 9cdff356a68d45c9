"""Reading what the metrics compare: a job's output rows (predictions), and pairing their ids with references'.

Predictions are the rows a caption or ask job writes (JSONL, CSV or Parquet with ``id``, ``status`` and the
result column) or a results file in the COCO/VQA format (a JSON list of ``{"image_id"|"question_id", ...}``).
A row whose ``status`` is ``failed`` has no result: it is kept apart and reported, never scored as text.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_KEYS = ("id", "image_id", "question_id")  # a row's id: ours, or a COCO / VQA results file's
SHOWN = 3  # ids an error lists before "..."


class EvaluationInputError(ValueError):
    """Predictions or references that cannot be read or paired: the message names the file and the bad value."""


@dataclass
class Predictions:
    """A job's results by row id; ``failed`` are the ids of rows that failed (no result), in file order."""

    values: dict[str, str]
    failed: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # every row by id, for other columns (question)

    @property
    def ids(self) -> list[str]:
        return [*self.values, *self.failed]


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a .jsonl, .csv, .parquet or .json (a list of objects) file."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    if suffix == ".parquet":
        from blipkit.jobs.sources import require_pyarrow

        pa = require_pyarrow()
        try:
            return pa.parquet.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as error:
            raise EvaluationInputError(f"{path} is not a Parquet file: {error}") from None
    if suffix == ".json":
        rows = read_json(path)
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise EvaluationInputError(f"{path} is not a list of JSON objects (a results file)")
        return rows
    raise EvaluationInputError(f"cannot read {path}: expected a .jsonl, .csv, .parquet or .json file")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise EvaluationInputError(f"{path} line {number} is not a JSON object")
            rows.append(row)
    return rows


def read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvaluationInputError(f"{path} is not JSON: {error}") from None


def read_predictions(path: str | os.PathLike, column: str, job: str) -> Predictions:
    """``column`` ("caption", "answer") of every row of ``path``, by id; ``job`` names what writes such rows."""
    path = Path(path)
    rows = read_rows(path)
    expected = f"expected the {job} job's output: rows with 'id' and '{column}'"
    if not rows:
        raise EvaluationInputError(f"{path} has no rows; {expected}")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    key = next((k for k in RESULT_KEYS if k in columns), None)
    if key is None or column not in columns:
        missing = "id" if key is None else column
        raise EvaluationInputError(f"{path} has no '{missing}' column (it has {', '.join(columns)}); {expected}")
    predictions = Predictions({})
    for number, row in enumerate(rows, start=1):
        if row.get(key) in (None, ""):
            raise EvaluationInputError(f"{path} row {number} has no {key}")
        name = str(row[key])
        if name in predictions.rows:
            raise EvaluationInputError(f"{path} has the id {name} twice")
        predictions.rows[name] = row
        if row.get("status") == "failed":
            predictions.failed.append(name)
            continue
        value = row.get(column)
        if not isinstance(value, str):
            raise EvaluationInputError(f"{path}: the row with id {name} has {column} {value!r}, not text")
        predictions.values[name] = value
    return predictions


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def report_failed(predictions: Predictions, warn: Callable[[str], None]) -> None:
    """Say how many rows failed (they are not scored), naming the first few."""
    failed = predictions.failed
    if failed:
        warn(
            f"blipkit: {counted(len(failed), 'prediction')} of {len(predictions.ids)} failed and "
            f"{'is' if len(failed) == 1 else 'are'} not scored: {listed(failed)}"
        )


def listed(ids: Iterable[Any]) -> str:
    """The first few ids, for an error: ``a.jpg, b.jpg, c.jpg, ...``."""
    ids = [str(i) for i in ids]
    return ", ".join(ids[:SHOWN]) + (", ..." if len(ids) > SHOWN else "")


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def id_candidates(name: str, numbers: bool = True) -> list[str]:
    """The keys a job's row id may be known by in a reference file, most specific first: the id itself; a table
    row's KEY (ids ``TABLE:KEY``); the path's trailing parts (``photos/val/x.jpg`` -> ``val/x.jpg``, ``x.jpg``);
    and with ``numbers``, the number a file name ends in (``COCO_val2014_000000391895.jpg`` -> ``391895``, a COCO
    image id)."""
    candidates = [name]
    if ":" in name and "://" not in name:
        candidates.append(name.rsplit(":", 1)[1])
    parts = re.split(r"[/\\]", candidates[-1])
    candidates += ["/".join(parts[i:]) for i in range(1, len(parts))]
    digits = re.search(r"(\d+)$", Path(parts[-1]).stem)
    if numbers and digits:
        candidates.append(str(int(digits.group(1))))
    return list(dict.fromkeys(candidates))


def pair(
    predictions: Iterable[str],
    aliases: Mapping[str, str],
    references: Iterable[str],
    predictions_path: str | os.PathLike,
    references_path: str | os.PathLike,
    numbers: bool = True,
) -> dict[str, str]:
    """Each prediction id's reference key. ``aliases`` maps every name a reference goes by (its id, file name,
    ...) to its key. Predictions without a reference, references without a prediction and two predictions of one
    reference are errors that name how many and the first few. ``numbers``: see ``id_candidates``."""
    paired: dict[str, str] = {}
    owner: dict[str, str] = {}
    orphans = []
    for name in predictions:
        key = next((aliases[c] for c in id_candidates(name, numbers) if c in aliases), None)
        if key is None:
            orphans.append(name)
        elif key in owner:
            raise EvaluationInputError(
                f"the predictions {owner[key]} and {name} in {predictions_path} are both for reference {key}"
            )
        else:
            paired[name] = key
            owner[key] = name
    if orphans:
        raise EvaluationInputError(
            f"{counted(len(orphans), 'prediction')} in {predictions_path} "
            f"{'has' if len(orphans) == 1 else 'have'} no reference in {references_path}: {listed(orphans)}"
        )
    unanswered = [key for key in references if key not in owner]
    if unanswered:
        raise EvaluationInputError(
            f"{counted(len(unanswered), 'reference')} in {references_path} "
            f"{'has' if len(unanswered) == 1 else 'have'} no prediction in {predictions_path}: {listed(unanswered)}"
        )
    return paired
