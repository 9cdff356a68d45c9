"""What each job does to a batch: ``prepare`` (decode and preprocess, in a background thread) then ``infer``.

A worker holds one model. The same worker runs in the local runner and inside each Ray actor, so both engines
produce the same records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from blipkit.defaults import DEFAULT_MODELS
from blipkit.jobs.sources import Item
from blipkit.modeling.base import check_dtype
from blipkit.modeling.quantize import check_method

TASK_MODELS = {
    "caption": ("image-to-text", "BlipForConditionalGeneration"),
    "ask": ("visual-question-answering", "BlipForQuestionAnswering"),
    "match": ("image-text-matching", "BlipForImageTextRetrieval"),
    "embed": ("image-text-matching", "BlipForImageTextRetrieval"),
}
# The columns of each task's records (CSV header order), after id, status and error.
TASK_FIELDS = {
    "caption": ("caption",),
    "ask": ("question", "answer"),
    "match": ("text", "itm", "itc"),
    "embed": ("embedding",),
}


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
        if self.task not in TASK_MODELS:
            raise ValueError(f"unknown job {self.task!r}; choose one of {', '.join(TASK_MODELS)}")
        if self.task == "ask" and not self.question:
            raise ValueError("an ask job needs a question")
        # Checked here, before a job creates its output, rather than when the model loads.
        if self.dtype not in (None, "auto"):
            check_dtype(self.dtype)
        if self.quantize is not None:
            check_method(self.quantize)

    @property
    def fields(self) -> tuple[str, ...]:
        return ("id", "status", "error", *TASK_FIELDS[self.task])

    def settings(self) -> dict[str, Any]:
        """What decides this job's results, so that a resume can tell whether an output's rows are this job's.
        Not the device, batch size or engine: moving a job to a GPU or to Ray keeps its rows."""
        model = self.model or DEFAULT_MODELS[TASK_MODELS[self.task][0]]
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
    pixel_values: torch.Tensor | None
    texts: list[str]


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        import blipkit
        from blipkit.processing.processors import BlipProcessor

        self.spec = spec
        task, class_name = TASK_MODELS[spec.task]
        source = spec.model or DEFAULT_MODELS[task]
        options = {"mask_question_padding": True} if spec.task == "ask" else {}
        self.model = getattr(blipkit, class_name).from_pretrained(
            source, dtype=spec.dtype, device=spec.device, quantize=spec.quantize, **options
        )
        self.processor = BlipProcessor.from_pretrained(source)

    def prepare(self, items: list[Item]) -> Prepared:
        """Decode and preprocess each image on its own, so one bad image fails alone, with its reason."""
        good, failed, arrays, texts = [], [], [], []
        for item in items:
            text = self._text(item)
            if item.error:
                failed.append(self._failure(item, item.error))
                continue
            if self.spec.task == "match" and not text:
                failed.append(self._failure(item, "no text to match: the source has no caption and no --text"))
                continue
            try:
                arrays.append(self.processor.image_processor(item.image)["pixel_values"])
            except Exception as error:  # a bad image is a failed row; the job goes on
                failed.append(self._failure(item, str(error)))
                continue
            good.append(item)
            texts.append(text)
        pixels = torch.cat(arrays) if arrays else None
        return Prepared(good, failed, pixels, texts)

    def infer(self, batch: Prepared) -> list[dict[str, Any]]:
        records = list(batch.failed)
        if not batch.items:
            return records
        pixels = batch.pixel_values.to(self.model.device, self.model.dtype)
        with torch.no_grad():
            results = getattr(self, f"_{self.spec.task}")(pixels, batch.texts)
        for item, result in zip(batch.items, results, strict=True):
            records.append({"id": item.id, "status": "ok", "error": None, **result})
        return records

    def process(self, items: list[Item]) -> list[dict[str, Any]]:
        return self.infer(self.prepare(items))

    # ----------------------------------------------------------------------------------------------- tasks
    def _caption(self, pixels: torch.Tensor, texts: list[str]) -> list[dict[str, Any]]:
        prompt = None
        if self.spec.prompt:
            prompt = self._tokens([self.spec.prompt] * len(pixels))
        ids = self.model.generate(pixels, **(prompt or {}), **self.spec.generate_kwargs)
        return [{"caption": c} for c in self._decode(ids)]

    def _ask(self, pixels: torch.Tensor, texts: list[str]) -> list[dict[str, Any]]:
        question = self._tokens([self.spec.question] * len(pixels))
        ids = self.model.generate(pixel_values=pixels, **question, **self.spec.generate_kwargs)
        return [{"question": self.spec.question, "answer": a} for a in self._decode(ids)]

    def _match(self, pixels: torch.Tensor, texts: list[str]) -> list[dict[str, Any]]:
        tokens = self._tokens(texts)
        itm = self.model(pixel_values=pixels, **tokens).itm_score.float().softmax(-1)[:, 1]
        itc = self.model(pixel_values=pixels, **tokens, use_itm_head=False).itm_score.float().diagonal()
        return [{"text": t, "itm": float(m), "itc": float(c)} for t, m, c in zip(texts, itm, itc, strict=True)]

    def _embed(self, pixels: torch.Tensor, texts: list[str]) -> list[dict[str, Any]]:
        image = self.model.vision_model(pixels).last_hidden_state[:, 0]
        embeddings = torch.nn.functional.normalize(self.model.vision_proj(image).float(), dim=-1)
        return [{"embedding": e.tolist()} for e in embeddings]

    # ----------------------------------------------------------------------------------------------- helpers
    def _text(self, item: Item) -> str | None:
        return self.spec.text or item.text

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.processor.tokenizer(texts, padding=True, return_tensors="pt")
        return {k: v.to(self.model.device) for k, v in tokens.items()}

    def _decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    @staticmethod
    def _failure(item: Item, reason: str) -> dict[str, Any]:
        return {"id": item.id, "status": "failed", "error": " ".join(reason.split())}
