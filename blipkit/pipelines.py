"""``blipkit.pipeline(task)``: captioning, VQA, image-text matching and zero-shot classification in one call, for
BLIP and BLIP-2 checkpoints alike (the task registry, ``blipkit.tasks``, picks the model for each)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from blipkit.processing.text import check_text, check_texts
from blipkit.tasks import LoadedTask, get_task, load

__all__ = ["pipeline"]


class Pipeline:
    """A loaded task and how its call arguments become batches of ``batch_size`` rows and results."""

    def __init__(self, loaded: LoadedTask, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.batch_size = batch_size

    def _batches(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        for start in range(0, len(items), self.batch_size):
            yield items[start : start + self.batch_size]

    def _run(self, images: list[Any], texts: list[str] | None, **options: Any) -> list[Any]:
        return self.loaded.run(self.loaded.pixel_values(images), texts, **options)

    def _present(self, results: list[Any], texts: Sequence[str | None]) -> list[Any]:
        return [self.loaded.task.present(result, text) for result, text in zip(results, texts, strict=True)]


class ImageToTextPipeline(Pipeline):
    """``pipe(image_or_images, prompt=None, **generate_kwargs)`` -> ``[{"generated_text": ...}]`` per image.

    BLIP's caption continues the prompt (and includes it); BLIP-2's is what the language model wrote after it."""

    def __call__(self, images: Any, prompt: str | None = None, **generate_kwargs: Any) -> list:
        if prompt is not None:
            check_text(prompt, "prompt")
        items, single = _as_list(images)
        results = []
        for chunk in self._batches(items):
            prompts = None if prompt is None else [prompt] * len(chunk)
            results += self._present(self._run(list(chunk), prompts, **generate_kwargs), [prompt] * len(chunk))
        return results[0] if single else results


class ImageTextToTextPipeline(Pipeline):
    """``pipe(images=..., text=...)`` -> ``[{"input_text": text, "generated_text": ...}]`` per image, as the
    reference's image-text-to-text pipeline: by default the text followed by what the model wrote after it
    (``return_full_text=False``: only what it wrote)."""

    def __call__(
        self, images: Any, text: str | Sequence[str], return_full_text: bool = True, **generate_kwargs: Any
    ) -> list:
        items, single = _as_list(images)
        texts = check_texts(text)
        if isinstance(text, str):
            texts *= len(items)
        if len(texts) != len(items):
            raise ValueError(f"got {len(items)} images but {len(texts)} texts")
        results = []
        for chunk in self._batches(list(zip(items, texts, strict=True))):
            prompts = [c[1] for c in chunk]
            generated = self._run([c[0] for c in chunk], prompts, **generate_kwargs)
            for prompt, sequences in zip(prompts, generated, strict=True):
                new = [self.loaded.written_after(prompt, text) for text in sequences]
                full = [prompt + text for text in new] if return_full_text else new
                results.append([{"input_text": prompt, "generated_text": text} for text in full])
        return results[0] if single else results


class VisualQuestionAnsweringPipeline(Pipeline):
    """``pipe(image=..., question=...)`` -> ``[{"answer": ...}]``; a list of images (one question each, or the
    same question for all) gives a list of those. BLIP-2 is asked ``Question: {question} Answer:`` (``pipeline(...,
    prompt_template=...)`` to change it)."""

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
        for chunk in self._batches(list(zip(images, questions, strict=True))):
            asked = [c[1] for c in chunk]
            results += self._present(self._run([c[0] for c in chunk], asked, **generate_kwargs), asked)
        return results[0] if single else results


class ImageTextMatchingPipeline(Pipeline):
    """``pipe(image, texts)`` -> ``[{"text", "score", "similarity"}]``: ``score`` is the ITM head's probability
    that the text matches the image, ``similarity`` the ITC cosine similarity of their embeddings."""

    def __call__(self, image: Any, text: str | Sequence[str]) -> list:
        texts = check_texts(text)
        results = []
        for chunk in self._batches(texts):
            # One image for many texts: BLIP's cross-attention shares its tokens across the texts, uncopied.
            results += self._present(self._run([image], list(chunk)), chunk)
        return results


class ZeroShotImageClassificationPipeline(Pipeline):
    """``pipe(image, candidate_labels=[...])`` -> labels sorted by probability.

    Probabilities are a softmax over the ITC cosine similarities of the image and each ``hypothesis_template``
    filled with a label, divided by ``temperature`` (0.07, the BLIP/CLIP initial contrastive temperature; the
    reference's retrieval model keeps no learned temperature).
    """

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
        similarities = torch.tensor([s for chunk in self._batches(texts) for s in self._run([image], list(chunk))])
        probabilities = (similarities / temperature).softmax(-1)
        ranked = sorted(zip(labels, probabilities.tolist(), strict=True), key=lambda x: -x[1])
        return [{"label": label, "score": score} for label, score in ranked]


def pipeline(
    task: str,
    model: str | os.PathLike | None = None,
    device: str | torch.device | int | None = None,
    dtype: torch.dtype | str | None = None,
    batch_size: int = 8,
    use_fast: bool = False,
    **load_kwargs: Any,
) -> Callable[..., list]:
    """Load the model (default: the task's Salesforce checkpoint) and its processor for ``task``; a BLIP or a BLIP-2
    checkpoint, told apart by its config.json.

    ``device`` as the reference's: -1 or "cpu", N or "cuda:N", "mps". ``load_kwargs`` go to ``from_pretrained``
    (``revision``, ``cache_dir``, ``local_files_only``, the reference's ``torch_dtype`` and ``device_map``, and model
    options such as ``use_enc_token``); ``use_fast`` picks the batched torch image processor; ``prompt_template``
    says how BLIP-2 is asked a question (default ``"Question: {} Answer:"``).
    """
    chosen = get_task(task)
    loaded = load(chosen, model, device=device, dtype=dtype, use_fast=use_fast, **load_kwargs)
    return globals()[chosen.pipeline](loaded, batch_size=batch_size)


def _as_list(images: Any) -> tuple[list[Any], bool]:
    """A list of inputs, and whether the caller gave a single one."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        return list(images), False
    return [images], True
