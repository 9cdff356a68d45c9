"""``blipkit.pipeline(task)``: captioning, VQA, image-text matching and zero-shot classification in one call."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from blipkit.defaults import DEFAULT_MODELS
from blipkit.modeling.base import PreTrainedModel
from blipkit.processing.processors import BlipProcessor
from blipkit.processing.text import check_text, check_texts


class Pipeline:
    """A loaded model and processor, and how one task turns inputs into results, in batches of ``batch_size``."""

    model_class: str = ""
    command: str | None = None  # the `blipkit` command that runs this task, if one does

    def __init__(self, model: PreTrainedModel, processor: BlipProcessor, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.batch_size = batch_size

    def _inputs(self, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Processor outputs on the model's device, pixel values in the model's dtype."""
        batch = self.processor(**kwargs)
        out = {k: v.to(self.model.device) for k, v in batch.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.model.dtype)
        return out

    def _batches(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        for start in range(0, len(items), self.batch_size):
            yield items[start : start + self.batch_size]

    def _decode(self, ids: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


class ImageToTextPipeline(Pipeline):
    """``pipe(image_or_images, prompt=None, **generate_kwargs)`` -> ``[{"generated_text": ...}]`` per image."""

    model_class = "BlipForConditionalGeneration"
    command = "caption"

    def __call__(self, images: Any, prompt: str | None = None, **generate_kwargs: Any) -> list:
        if prompt is not None:
            check_text(prompt, "prompt")
        items, single = _as_list(images)
        results = []
        with torch.no_grad():
            for chunk in self._batches(items):
                if prompt is None:
                    inputs = self._inputs(images=list(chunk))
                else:
                    inputs = self._inputs(images=list(chunk), text=[prompt] * len(chunk), padding=True)
                ids = self.model.generate(**inputs, **generate_kwargs)
                per_image = ids.shape[0] // len(chunk)  # num_return_sequences rows per image
                texts = self._decode(ids)
                for i in range(len(chunk)):
                    results.append([{"generated_text": t} for t in texts[i * per_image : (i + 1) * per_image]])
        return results[0] if single else results


class VisualQuestionAnsweringPipeline(Pipeline):
    """``pipe(image=..., question=...)`` -> ``[{"answer": ...}]``; a list of images (one question each, or the
    same question for all) gives a list of those."""

    model_class = "BlipForQuestionAnswering"
    command = "ask"

    def __call__(self, image: Any = None, question: str | Sequence[str] | None = None, **generate_kwargs: Any) -> list:
        if image is None or question is None:
            raise ValueError("visual-question-answering needs both image= and question=")
        questions = check_texts(question, "question")
        images, single = _as_list(image)
        if isinstance(question, str):
            questions *= len(images)
        if len(questions) != len(images):
            raise ValueError(f"got {len(images)} images but {len(questions)} questions")
        results = []
        with torch.no_grad():
            for chunk in self._batches(list(zip(images, questions, strict=True))):
                inputs = self._inputs(images=[c[0] for c in chunk], text=[c[1] for c in chunk], padding=True)
                ids = self.model.generate(**inputs, **generate_kwargs)
                per_image = ids.shape[0] // len(chunk)
                answers = self._decode(ids)
                for i in range(len(chunk)):
                    results.append([{"answer": a} for a in answers[i * per_image : (i + 1) * per_image]])
        return results[0] if single else results


class ImageTextMatchingPipeline(Pipeline):
    """``pipe(image, texts)`` -> ``[{"text", "score", "similarity"}]``: ``score`` is the ITM head's probability
    that the text matches the image, ``similarity`` the ITC cosine similarity of their embeddings."""

    model_class = "BlipForImageTextRetrieval"
    command = "match"

    def __call__(self, image: Any, text: str | Sequence[str]) -> list:
        texts = check_texts(text)
        results = []
        with torch.no_grad():
            for chunk in self._batches(texts):
                # One image for many texts: cross-attention shares its tokens across the texts, uncopied.
                inputs = self._inputs(images=[image], text=list(chunk), padding=True)
                match = self.model(**inputs).itm_score.float().softmax(-1)[:, 1]
                cosine = self.model(**inputs, use_itm_head=False).itm_score[0].float()
                results += [
                    {"text": t, "score": float(p), "similarity": float(c)}
                    for t, p, c in zip(chunk, match, cosine, strict=True)
                ]
        return results


class ZeroShotImageClassificationPipeline(Pipeline):
    """``pipe(image, candidate_labels=[...])`` -> labels sorted by probability.

    Probabilities are a softmax over the ITC cosine similarities of the image and each ``hypothesis_template``
    filled with a label, divided by ``temperature`` (0.07, the BLIP/CLIP initial contrastive temperature; the
    reference's retrieval model keeps no learned temperature).
    """

    model_class = "BlipForImageTextRetrieval"

    def __call__(
        self,
        image: Any,
        candidate_labels: Sequence[str],
        hypothesis_template: str = "a photo of {}",
        temperature: float = 0.07,
    ) -> list:
        labels = check_texts(candidate_labels, "candidate_labels")
        if "{}" not in check_text(hypothesis_template, "hypothesis_template"):
            raise ValueError(f"hypothesis_template must hold {{}} where each label goes, got {hypothesis_template!r}")
        texts = [hypothesis_template.format(label) for label in labels]
        with torch.no_grad():
            similarities = torch.cat(
                [
                    self.model(**self._inputs(images=[image], text=list(chunk), padding=True), use_itm_head=False)
                    .itm_score[0]
                    .float()
                    for chunk in self._batches(texts)
                ]
            )
        probabilities = (similarities / temperature).softmax(-1)
        ranked = sorted(zip(labels, probabilities.tolist(), strict=True), key=lambda x: -x[1])
        return [{"label": label, "score": score} for label, score in ranked]


TASKS: dict[str, type[Pipeline]] = {
    "image-to-text": ImageToTextPipeline,
    "visual-question-answering": VisualQuestionAnsweringPipeline,
    "vqa": VisualQuestionAnsweringPipeline,
    "image-text-matching": ImageTextMatchingPipeline,
    "zero-shot-image-classification": ZeroShotImageClassificationPipeline,
}


def pipeline(
    task: str,
    model: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int = 8,
    use_fast: bool = False,
    **load_kwargs: Any,
) -> Callable[..., list]:
    """Load the model (default: the task's Salesforce checkpoint) and its processor for ``task``.

    ``load_kwargs`` go to ``from_pretrained`` (``revision``, ``cache_dir``, ``local_files_only``, and model options
    such as ``use_enc_token``); ``use_fast`` picks the batched torch image processor.
    """
    import blipkit

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(sorted(TASKS))}")
    task = "visual-question-answering" if task == "vqa" else task
    if task == "visual-question-answering":
        # Batched questions are padded; masking that padding keeps every answer what it would be on its own.
        load_kwargs.setdefault("mask_question_padding", True)
    source = model if model is not None else DEFAULT_MODELS[task]
    pipeline_class = TASKS[task]
    hub = {k: load_kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token") if k in load_kwargs}
    loaded = getattr(blipkit, pipeline_class.model_class).from_pretrained(
        source, dtype=dtype, device=device, **load_kwargs
    )
    processor = BlipProcessor.from_pretrained(source, use_fast=use_fast, **hub)
    return pipeline_class(loaded, processor, batch_size=batch_size)


def task_hint(model_class: str) -> str:
    """' (task, `blipkit command`)' for the first task whose pipeline runs ``model_class``; '' if none does."""
    for task, pipeline_class in TASKS.items():
        if pipeline_class.model_class == model_class:
            command = f", `blipkit {pipeline_class.command}`" if pipeline_class.command else ""
            return f" ({task}{command})"
    return ""


def _as_list(images: Any) -> tuple[list[Any], bool]:
    """A list of inputs, and whether the caller gave a single one."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        return list(images), False
    return [images], True
