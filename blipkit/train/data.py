"""Training rows: what ``blipkit finetune`` learns from, read as the batch jobs read their inputs.

Every source the jobs take (``blipkit.jobs.sources``: JSONL/CSV/Parquet tables, webdataset shards, folders of
images with same-name ``.txt`` captions, lists, globs) gives one ``Example`` a row. A row without what the task
needs becomes a ``Skipped`` that says where it is and what is missing: reported, never fatal, never dropped
silently. Images are not decoded here; the trainer decodes them as it batches them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blipkit.jobs.sources import TEXT_COLUMNS, Item, input_list, is_url, iter_items

TASKS = ("caption", "vqa", "retrieval")
ANSWER_COLUMNS = ("answers", "answer")  # VQAv2's list of annotators' answers, or one answer


@dataclass(frozen=True)
class Example:
    """One training row: its image (a path / URL, or the encoded bytes) and the texts its task reads."""

    id: str  # the batch jobs' id of the row: stable, unique per row
    image: str | bytes
    caption: str | None = None
    question: str | None = None
    # Every annotator's answer, repeats kept: how often an answer was given is its weight in the loss.
    answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    """A row that is not trained on, and why (the file, the row and what is missing or wrong)."""

    id: str
    reason: str


def read_examples(
    sources: str | os.PathLike | Sequence[str | os.PathLike], task: str
) -> tuple[list[Example], list[Skipped]]:
    """The rows of ``sources`` (one input or a list, as the batch jobs take them) that ``task`` can train on, and
    those it cannot. "caption" and "retrieval" need a caption; "vqa" a question and at least one answer.

    A missing input or an unknown layout raises the jobs' ``SourceError``; a bad row never raises.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    read = _vqa_example if task == "vqa" else _caption_example
    examples: list[Example] = []
    skipped: list[Skipped] = []
    for item in iter_items(input_list(sources)):
        result = Skipped(item.id, item.error) if item.error else read(item)
        (skipped if isinstance(result, Skipped) else examples).append(result)
    return examples, skipped


def _caption_example(item: Item) -> Example | Skipped:
    caption = _text(item, "caption", item.text)
    if caption is None:
        return Skipped(item.id, _no_caption(item))
    return caption if isinstance(caption, Skipped) else Example(item.id, item.image, caption=caption)


def _no_caption(item: Item) -> str:
    if item.where:  # a table row or a shard sample
        return f"{item.where} has no caption (no {', '.join(TEXT_COLUMNS[:-1])} or {TEXT_COLUMNS[-1]})"
    if is_url(item.id):
        return f"{item.id} has no caption: an image given by URL has none"
    return f"{item.id} has no caption: there is no {Path(item.id).with_suffix('.txt').name} beside it"


def _vqa_example(item: Item) -> Example | Skipped:
    question = _text(item, "question", item.columns.get("question"))
    if question is None:
        return Skipped(item.id, f"{_where(item)} has no question")
    if isinstance(question, Skipped):
        return question
    # The first answer column with something in it: a CSV has every column in every row, blank or not.
    column = next((c for c in ANSWER_COLUMNS if item.columns.get(c) not in (None, "")), None)
    if column is None:
        return Skipped(item.id, f"{_where(item)} has no answer (no {' or '.join(ANSWER_COLUMNS)})")
    answers = _answers(item.columns[column])
    if answers is None:
        value = _shown(item.columns[column])
        return Skipped(item.id, f"{_where(item)} has {column} {value}: expected a text or a list of texts")
    if not answers:
        return Skipped(item.id, f"{_where(item)} has only blank {column}")
    return Example(item.id, item.image, question=question, answers=answers)


def _text(item: Item, name: str, value: Any) -> str | Skipped | None:
    """A caption or question, stripped; None when the row has none; a Skipped when it is blank or not text."""
    if value is None:
        return None
    if not isinstance(value, str):
        return Skipped(item.id, f"{_where(item)} has a {name} that is not text: {_shown(value)}")
    if not value.strip():
        return Skipped(item.id, f"{_where(item)} has an empty {name}")
    return value.strip()


def _answers(value: Any) -> tuple[str, ...] | None:
    """The non-blank answers of an ``answer``/``answers`` value: a text, a list of texts or of VQAv2's
    ``{"answer": ...}`` objects, or such a list as JSON text (a CSV cell); None when it is none of these."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    values = value if isinstance(value, (list, tuple)) else [value]
    texts = [v.get("answer") if isinstance(v, dict) else v for v in values]
    if not all(isinstance(t, str) for t in texts):
        return None
    return tuple(t.strip() for t in texts if t.strip())


def _where(item: Item) -> str:
    return item.where or item.id


def _shown(value: Any) -> str:
    """A bad value for a message, cut short: a row's column may hold anything."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
