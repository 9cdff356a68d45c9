"""What each job does to a batch: ``prepare`` (decode and preprocess, in a background thread) then ``infer``.

A worker holds one loaded task (``blipkit.tasks``: BLIP or BLIP-2, picked by the checkpoint). The same worker runs in
the local runner and inside each Ray actor, so both engines produce the same records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from blipkit.jobs.sinks import Sink, check_format, open_sink
from blipkit.jobs.sources import Item
from blipkit.modeling.base import check_dtype
from blipkit.modeling.quantize import check_method
from blipkit.tasks import Task, load, task_for_command


class JobWorker(Protocol):
    """Runs a job on batches: ``prepare`` (decoding; in background threads) then ``infer`` (the models)."""

    def prepare(self, items: list[Item]) -> Any: ...

    def infer(self, prepared: Any) -> list[dict[str, Any]]: ...

    def process(self, items: list[Item]) -> list[dict[str, Any]]: ...


class JobSpec(Protocol):
    """What the runner and the Ray engine need of a job: its name and settings, where its rows may go, and a
    worker (built where the models run: in the process, or once per Ray actor)."""

    task: str

    def settings(self) -> dict[str, Any]: ...

    def check_output(self, out: Path) -> None: ...

    def open_sink(self, out: Path) -> Sink: ...

    def make_worker(self) -> JobWorker: ...


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to build a worker (and nothing heavy, so Ray can ship it to actors)."""

    task: str
    model: str | None = None
    dtype: str | None = None
    device: str | None = None
    question: str | None = None
    text: str | None = None
    prompt: str | None = None
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    quantize: str | None = None

    def __post_init__(self) -> None:
        task_for_command(self.task)  # an unknown job is refused here, naming the jobs there are
        # Checked here, before a job creates its output, rather than when the model loads.
        if self.dtype not in (None, "auto"):
            check_dtype(self.dtype)
        if self.quantize is not None:
            check_method(self.quantize)

    def make_worker(self) -> Worker:
        return Worker(self)

    def check_output(self, out: Path) -> None:
        check_format(out, self.task)

    def open_sink(self, out: Path) -> Sink:
        return open_sink(out, self.fields)

    @property
    def runs(self) -> Task:
        return task_for_command(self.task)

    @property
    def fields(self) -> tuple[str, ...]:
        return ("id", "status", "error", *self.runs.fields)

    def settings(self) -> dict[str, Any]:
        """What decides this job's results, so that a resume can tell whether an output's rows are this job's.
        Not the device, batch size or engine: moving a job to a GPU or to Ray keeps its rows."""
        model = self.model or self.runs.default_model
        return {
            "task": self.task,
            "model": os.path.abspath(model) if os.path.isdir(model) else model,
            "dtype": str(self.dtype).removeprefix("torch.") if self.dtype else None,
            "quantize": self.quantize,
            "question": self.question,
            "text": self.text,
            "prompt": self.prompt,
            **self.generate_kwargs,
        }


@dataclass
class Prepared:
    """A batch after decoding: records for the images that failed, pixel values and texts for the rest."""

    items: list[Item]
    failed: list[dict[str, Any]]
    images: list[np.ndarray]  # preprocessed, one per item (LoadedTask.image_array)
    texts: list[str]


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        # A job runs many batches: decode steps that read packed bf16 weights pay back packing them at load.
        self.loaded = load(
            spec.runs, spec.model, dtype=spec.dtype, device=spec.device, quantize=spec.quantize, pack_weights=True
        )
        self.model = self.loaded.model

    def prepare(self, items: list[Item]) -> Prepared:
        """Decode and preprocess each image on its own, so one bad image fails alone, with its reason."""
        good, failed, images, texts = [], [], [], []
        for item in items:
            text = self._text(item)
            if item.error:
                failed.append(failure(item, item.error))
                continue
            if self.spec.task == "match" and not text:
                failed.append(failure(item, "no text to match: the source has no caption and no --text"))
                continue
            if self.spec.task == "ask" and not text:
                failed.append(failure(item, "no question to ask: the source has no question column and no question"))
                continue
            try:
                images.append(self.loaded.image_array(item.image))
            except Exception as error:  # a bad image is a failed row; the job goes on
                failed.append(failure(item, str(error)))
                continue
            good.append(item)
            texts.append(text)
        return Prepared(good, failed, images, texts)

    def infer(self, batch: Prepared) -> list[dict[str, Any]]:
        records = list(batch.failed)
        if not batch.items:
            return records
        pixels = self.loaded.model_pixels(batch.images)
        texts = batch.texts if any(text is not None for text in batch.texts) else None
        results = self.loaded.run(pixels, texts, **self.spec.generate_kwargs)
        task = self.spec.runs
        for item, text, result in zip(batch.items, batch.texts, results, strict=True):
            records.append({"id": item.id, "status": "ok", "error": None, **task.record(result, text)})
        return records

    def process(self, items: list[Item]) -> list[dict[str, Any]]:
        return self.infer(self.prepare(items))

    def _text(self, item: Item) -> str | None:
        """The text an image is run with: the caption prompt (or none), the question (the job's, else the row's
        ``question`` column), the text to match, or none."""
        if self.spec.task == "ask":
            row_question = item.columns.get("question")
            return self.spec.question or (str(row_question).strip() if row_question is not None else None)
        fixed = {"caption": self.spec.prompt, "embed": None}
        return fixed.get(self.spec.task, self.spec.text or item.text)


def failure(item: Item, reason: str) -> dict[str, Any]:
    """The failed row of an image that could not be read or run, saying why on one line."""
    return {"id": item.id, "status": "failed", "error": " ".join(reason.split())}
