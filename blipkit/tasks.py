"""One registry of tasks: for each, the model class per checkpoint family, its default checkpoint, load options, how
a batch runs and how its results read - used by pipelines, the CLI and batch jobs alike.

To add a task: a ``Task`` in ``TASKS`` whose ``run`` calls one model method (and a pipeline class in
``blipkit.pipelines`` if its call arguments are new). Kept import-light: the CLI reads defaults before torch loads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from blipkit.hub import ModelFiles

# The processor that goes with each checkpoint family, by its config.json model_type.
PROCESSORS = {"blip": "BlipProcessor", "blip-2": "Blip2Processor"}
HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token")


@dataclass
class LoadedTask:
    """A task with its model and processor loaded: turns pixel values and texts into one result per row."""

    task: Task
    model: Any
    processor: Any
    prompt_template: str = "{}"  # how a prompt or question is put to the model (BLIP-2 VQA: "Question: {} Answer:")

    def pixel_values(self, images: Any) -> torch.Tensor:
        """Images (paths, URLs, bytes, arrays, ...) as the model's pixel values, on its device and in its dtype."""
        return self.processor.image_processor(images)["pixel_values"].to(self.model.device, self.model.dtype)

    def image_array(self, image: Any) -> np.ndarray:
        """One image preprocessed, (3, height, width) float32, by numpy and PIL alone: for decoding threads.

        No torch op runs here, on purpose: torch's CPU ops run in an OpenMP team per calling thread, and a second
        team beside the model thread's puts more threads than cores under libgomp, which then stops spinning
        between parallel regions; every small op of the model pays a wake-up (measured on 2 cores: small matmuls
        x1.6 slower, bf16 captioning 24% slower). ``model_pixels`` turns these into a batch on the model's thread.
        """
        return self.processor.image_processor(image, return_tensors="np")["pixel_values"][0]

    def model_pixels(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """``image_array`` results as one batch of pixel values on the model's device and in its dtype (call it on
        the thread that runs the model)."""
        import numpy as np
        import torch

        return torch.from_numpy(np.stack(arrays)).to(self.model.device, self.model.dtype)

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Texts tokenized as they go with images (BLIP-2: after its image placeholders), padded, on the device."""
        # Blip2Processor puts its image placeholders only before texts it encodes with images; these pixel values
        # were made apart from the text (in jobs, on decoding threads), so ask for the with-images form directly.
        encoded = self.processor.encode_text(texts, with_images=True, padding=True)
        return {k: v.to(self.model.device) for k, v in encoded.items()}

    def written_after(self, prompt: str, generated: str) -> str:
        """What the model wrote after ``prompt`` in ``generated`` (a decoded output): the prompt as the tokenizer
        reads it back (BLIP's lowercases it) is cut where the reference's pipeline finds it, within 2 characters of
        the start; text without it (T5 writes only the answer, BLIP-2 outputs are cut already) is returned whole."""
        ids = self.processor.tokenizer(self.prompt_template.format(prompt))["input_ids"]
        decoded = self.processor.decode(ids, skip_special_tokens=True)
        start = generated.find(decoded)
        return generated[start + len(decoded) :] if 0 <= start <= 2 else generated

    def run(self, pixel_values: torch.Tensor, texts: list[str] | None, **options: Any) -> list[Any]:
        import torch

        with torch.no_grad():
            return self.task.run(self, pixel_values, texts, options)


@dataclass(frozen=True)
class Task:
    """What a task needs, whichever consumer (pipeline, command, batch job) runs it."""

    name: str
    default_model: str
    model_classes: Mapping[str, str]  # config.json model_type -> the blipkit class that runs the task
    run: Callable[[LoadedTask, Any, list[str] | None, dict[str, Any]], list[Any]]  # one result per row
    present: Callable[[Any, str | None], Any] | None = None  # a pipeline's output for one result and its text
    pipeline: str | None = None  # the class in blipkit.pipelines that takes this task's call arguments
    command: str | None = None  # the `blipkit` command, and batch job, that runs the task
    record: Callable[[Any, str | None], dict[str, Any]] | None = None  # a job row's columns for one result
    fields: tuple[str, ...] = ()  # those columns, in CSV order
    load_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # model_type -> from_pretrained
    prompt_templates: Mapping[str, str] = field(default_factory=dict)  # model_type -> how prompts are put

    def model_class(self, model_type: str, source: str | os.PathLike) -> str:
        if model_type not in self.model_classes:
            runs = ", ".join(f"{t!r} ({c})" for t, c in self.model_classes.items())
            raise ValueError(f"{source} is a {model_type!r} checkpoint, which {self.name} cannot run: it runs {runs}")
        return self.model_classes[model_type]


# ----------------------------------------------------------------------------------------------- batch runners
def generate_texts(loaded: LoadedTask, pixel_values: torch.Tensor, texts: list[str] | None, options: dict) -> list:
    """Each image's generated texts (``num_return_sequences`` of them), undecorated. BLIP's include the prompt (its
    caption continues it); BLIP-2's are what the language model wrote after the prompt (OPT's ``generate`` returns
    the prompt first, T5's only the answer)."""
    prompts = {}
    if texts is not None:
        prompts = loaded.tokens([loaded.prompt_template.format(text) for text in texts])
    ids = loaded.model.generate(pixel_values=pixel_values, **prompts, **options)
    if prompts and _continues_prompt(loaded.model):
        ids = ids[:, prompts["input_ids"].shape[1] :]
    decoded = loaded.processor.batch_decode(ids, skip_special_tokens=True)
    per_image = len(decoded) // len(pixel_values)
    return [decoded[i * per_image : (i + 1) * per_image] for i in range(len(pixel_values))]


def _continues_prompt(model: Any) -> bool:
    """A BLIP-2 whose language model continues the prompt (OPT), rather than encoding it (T5). (A BLIP-2 retrieval
    model's config names OPT too, by default, but it has no language model.)"""
    return hasattr(model, "language_model") and model.config.use_decoder_only_language_model


def score_pairs(loaded: LoadedTask, pixel_values: torch.Tensor, texts: list[str] | None, options: dict) -> list:
    """(ITM probability, ITC cosine) for each text with its image (a single image pairs with every text)."""
    match, similarity = loaded.model.image_text_scores(pixel_values, **loaded.tokens(texts))
    return list(zip(match.tolist(), similarity.tolist(), strict=True))


def similarities(loaded: LoadedTask, pixel_values: torch.Tensor, texts: list[str] | None, options: dict) -> list:
    """The ITC cosine similarity of the (single) image with each text."""
    return loaded.model.image_text_similarity(pixel_values, **loaded.tokens(texts))[0].float().tolist()


def embed_images(loaded: LoadedTask, pixel_values: torch.Tensor, texts: list[str] | None, options: dict) -> list:
    """Each image's normalized ITC embedding (BLIP-2: one per query)."""
    return loaded.model.get_image_features(pixel_values).float().tolist()


def embed_texts(loaded: LoadedTask, pixel_values: None, texts: list[str] | None, options: dict) -> list:
    """Each text's normalized ITC embedding, in the space of ``embed_images`` (no image: ``pixel_values`` is None)."""
    return loaded.model.get_text_features(**loaded.tokens(texts)).float().tolist()


# ----------------------------------------------------------------------------------------------- the registry
CAPTIONING = {"blip": "BlipForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration"}
RETRIEVAL = {"blip": "BlipForImageTextRetrieval", "blip-2": "Blip2ForImageTextRetrieval"}
MATCHING_MODEL = "Salesforce/blip-itm-base-coco"

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "image-to-text",
            "Salesforce/blip-image-captioning-base",
            CAPTIONING,
            generate_texts,
            present=lambda texts, _: [{"generated_text": text.strip()} for text in texts],
            pipeline="ImageToTextPipeline",
            command="caption",
            record=lambda texts, _: {"caption": texts[0].strip()},
            fields=("caption",),
        ),
        Task(
            "image-text-to-text",
            "Salesforce/blip-image-captioning-base",
            CAPTIONING,
            generate_texts,
            pipeline="ImageTextToTextPipeline",
        ),
        Task(
            "visual-question-answering",
            "Salesforce/blip-vqa-base",
            {"blip": "BlipForQuestionAnswering", "blip-2": "Blip2ForConditionalGeneration"},
            generate_texts,
            present=lambda answers, _: [{"answer": answer.strip()} for answer in answers],
            pipeline="VisualQuestionAnsweringPipeline",
            command="ask",
            record=lambda answers, question: {"question": question, "answer": answers[0].strip()},
            fields=("question", "answer"),
            # Batched questions are padded; masking that padding keeps every answer what it would be on its own.
            load_options={"blip": {"mask_question_padding": True}},
            prompt_templates={"blip-2": "Question: {} Answer:"},  # BLIP-2's VQA prompt, as its paper asks
        ),
        Task(
            "image-text-matching",
            MATCHING_MODEL,
            RETRIEVAL,
            score_pairs,
            present=lambda scores, text: {"text": text, "score": scores[0], "similarity": scores[1]},
            pipeline="ImageTextMatchingPipeline",
            command="match",
            record=lambda scores, text: {"text": text, "itm": scores[0], "itc": scores[1]},
            fields=("text", "itm", "itc"),
        ),
        Task(
            "zero-shot-image-classification",
            MATCHING_MODEL,
            RETRIEVAL,
            similarities,
            pipeline="ZeroShotImageClassificationPipeline",
        ),
        Task(
            "image-embedding",
            MATCHING_MODEL,
            RETRIEVAL,
            embed_images,
            command="embed",
            record=lambda embedding, _: {"embedding": embedding},
            fields=("embedding",),
        ),
        Task("text-embedding", MATCHING_MODEL, RETRIEVAL, embed_texts),
    )
}
ALIASES = {"vqa": "visual-question-answering"}


def get_task(name: str) -> Task:
    """The task called ``name`` (or an alias of it)."""
    task = TASKS.get(ALIASES.get(name, name))
    if task is None or task.pipeline is None:
        choices = sorted([*(t.name for t in TASKS.values() if t.pipeline), *ALIASES])
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(choices)}")
    return task


def task_for_command(command: str) -> Task:
    """The task that the `blipkit` command (and batch job) ``command`` runs."""
    for task in TASKS.values():
        if task.command == command:
            return task
    commands = [t.command for t in TASKS.values() if t.command]
    raise ValueError(f"unknown job {command!r}; choose one of {', '.join(commands)}")


def task_hint(model_class: str) -> str:
    """' (task, `blipkit command`)' for the first task a ``model_class`` runs; '' if it runs none."""
    for task in TASKS.values():
        if model_class in task.model_classes.values():
            command = f", `blipkit {task.command}`" if task.command else ""
            return f" ({task.name}{command})"
    return ""


def checkpoint_model_type(source: str | os.PathLike | ModelFiles, **hub: Any) -> str:
    """The family of a checkpoint: its config.json ``model_type``, or else what its ``architectures`` name."""
    from blipkit.configs import ConfigError
    from blipkit.hub import ModelFiles, read_json

    config = read_json(ModelFiles.open(source, **hub).get("config.json"), ConfigError)
    model_type = config.get("model_type")
    if not model_type:
        architectures = config.get("architectures") or []
        model_type = next(("blip-2" if a.startswith("Blip2") else "blip" for a in architectures), None)
    if model_type not in PROCESSORS:
        raise ValueError(
            f"{source} is a {model_type!r} checkpoint (config.json model_type); blipkit runs "
            f"{' and '.join(map(repr, PROCESSORS))} checkpoints"
        )
    return model_type


def load(
    task: Task,
    model: str | os.PathLike | None = None,
    *,
    device: Any = None,
    dtype: Any = None,
    use_fast: bool = False,
    prompt_template: str | None = None,
    **load_kwargs: Any,
) -> LoadedTask:
    """Load the model and processor that run ``task`` on ``model`` (default: the task's checkpoint), the class
    chosen by the checkpoint's family. ``load_kwargs`` go to ``from_pretrained`` over the task's load options;
    ``prompt_template`` (with ``{}`` where the prompt or question goes) replaces the task's for that family."""
    import blipkit

    if prompt_template is not None and "{}" not in prompt_template:
        raise ValueError(f"prompt_template must hold {{}} where the prompt or question goes, got {prompt_template!r}")
    from blipkit.hub import ModelFiles

    source = model if model is not None else task.default_model
    # Opened once: the family, the model and the processor all read the same files, each looked up once.
    files = ModelFiles.open(source, **{k: load_kwargs.pop(k) for k in HUB_OPTIONS if k in load_kwargs})
    model_type = checkpoint_model_type(files)
    model_class = getattr(blipkit, task.model_class(model_type, source))
    options = {**task.load_options.get(model_type, {}), **load_kwargs}
    loaded = model_class.from_pretrained(files, dtype=dtype, device=device, **options)
    processor = getattr(blipkit, PROCESSORS[model_type]).from_pretrained(files, use_fast=use_fast)
    if _continues_prompt(loaded):
        # OPT continues from its prompt's last position, so a batch's shorter prompts are padded before the text,
        # whatever side the tokenizer pads on (the reference pads as the tokenizer says: blip2-opt's pad right).
        processor.tokenizer.padding_side = "left"
    elif task.model_classes is RETRIEVAL:
        # A text's ITC embedding is its first token's (BLIP-2 like BLIP): padding must come after the text.
        processor.tokenizer.padding_side = "right"
    template = prompt_template or task.prompt_templates.get(model_type, "{}")
    return LoadedTask(task, loaded, processor, template)
