"""Which loaded model serves which route: each ``--model`` loaded once, its tasks read from its config's
``architectures`` through the task registry, and how a batch of a model's items runs."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from blipkit.hub import ModelFiles, read_json
from blipkit.tasks import TASKS, LoadedTask, Task, checkpoint_model_type, load

# Each route and the tasks it runs, in order of preference: a chat message is the question for a model that
# answers questions (BLIP VQA, BLIP-2), else the prompt a caption continues.
ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/caption": ("image-to-text",),
    "/v1/vqa": ("visual-question-answering",),
    "/v1/match": ("image-text-matching",),
    "/v1/embeddings": ("image-embedding", "text-embedding"),
    "/v1/chat/completions": ("visual-question-answering", "image-to-text"),
}
SERVED_TASKS = tuple(dict.fromkeys(task for tasks in ROUTES.values() for task in tasks))


class ModelNotFound(LookupError):
    """No loaded model of that name, or none that serves the route."""


@dataclass(frozen=True)
class BatchKey:
    """What the requests of one batch share: the model, the task and the settings that change results."""

    model: str
    task: str
    settings: tuple[tuple[str, Any], ...] = ()  # generate keywords, sorted
    prompt: str | None = None  # a caption continues its prompt: one prompt per batch, as pipeline() runs them
    seeded: bool = False  # sampling with a generator per image (seeded apart from global-RNG sampling)


@dataclass(eq=False)
class Item:
    """One row of a batch: an image as the model takes it and its text(s)."""

    pixels: np.ndarray | None = None  # (3, height, width), preprocessed (LoadedTask.image_array); None for a text
    text: str | tuple[str, ...] | None = None  # a prompt or question; the texts an image is matched against
    generator: torch.Generator | None = None  # a seeded request's, one per image: its draws its own


@dataclass
class ServedModel:
    name: str
    tasks: dict[str, LoadedTask]  # task name -> the task on this model (tasks on one model share its weights)
    created: int = field(default_factory=lambda: int(time.time()))

    def serves(self, route: str) -> bool:
        return any(task in self.tasks for task in ROUTES[route])

    def task_for(self, route: str) -> LoadedTask:
        return next(self.tasks[task] for task in ROUTES[route] if task in self.tasks)

    @property
    def routes(self) -> list[str]:
        return [route for route in ROUTES if self.serves(route)]


def presented(task: Task, sequences: list[str], text: str | None) -> list[str]:
    """Generated sequences as the task's pipeline presents them (stripped)."""
    return [next(iter(row.values())) for row in task.present(sequences, text)]


def load_model(source: str | os.PathLike, **load_kwargs: Any) -> ServedModel:
    """Load ``source`` once for every served task that its config's ``architectures`` runs."""
    files = ModelFiles.open(source)
    model_type = checkpoint_model_type(files)
    architectures = read_json(files.get("config.json")).get("architectures") or []
    tasks = [TASKS[name] for name in SERVED_TASKS if TASKS[name].model_classes.get(model_type) in architectures]
    if not tasks:
        runs = sorted({cls for name in SERVED_TASKS for cls in TASKS[name].model_classes.values()})
        raise ValueError(
            f"{source} is a {' / '.join(architectures) or 'model with no architectures in its config.json'}; "
            f"blipkit serve runs {', '.join(runs)}"
        )
    loaded: dict[str, LoadedTask] = {}
    for task in tasks:
        options = task.load_options.get(model_type, {})
        same = next((t for t in loaded.values() if t.task.load_options.get(model_type, {}) == options), None)
        if same is None:
            # A server decodes for as long as it runs: packed bf16 weights (``linear.packs_weights``) pay back.
            loaded[task.name] = load(task, files, **{"pack_weights": True, **load_kwargs})
        else:  # the same class with the same options: share its weights; only how prompts are put differs
            template = task.prompt_templates.get(model_type, "{}")
            loaded[task.name] = LoadedTask(task, same.model, same.processor, template)
    return ServedModel(str(source), loaded)


class Models:
    """The loaded models, by name, and the first that serves each route (the one a request without ``model``
    gets)."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise ValueError("no models to serve")
        self.by_name = {model.name: model for model in models}

    def __iter__(self):
        return iter(self.by_name.values())

    def pick(self, route: str, name: str | None = None) -> ServedModel:
        if name is not None:
            model = self.by_name.get(name)
            if model is None:
                raise ModelNotFound(f"no model {name!r} is loaded; loaded: {', '.join(self.by_name)}")
            if not model.serves(route):
                raise ModelNotFound(f"model {name!r} does not serve {route}; it serves {', '.join(model.routes)}")
            return model
        model = next((m for m in self if m.serves(route)), None)
        if model is None:
            served = "; ".join(f"{m.name}: {', '.join(m.routes)}" for m in self)
            raise ModelNotFound(f"no loaded model serves {route} (loaded: {served})")
        return model

    def run(self, key: BatchKey, items: Sequence[Item]) -> list[Any]:
        """One model call for a batch (the batcher's ``run``): one result per item, as the task's run gives it."""
        loaded = self.by_name[key.model].tasks[key.task]
        if key.task == "image-text-matching":
            # One image against a group of texts, as pipeline() scores them: the ViT once for the group.
            return [loaded.run(loaded.model_pixels([item.pixels]), list(item.text)) for item in items]
        pixels = None if items[0].pixels is None else loaded.model_pixels([item.pixels for item in items])
        texts = None if items[0].text is None else [item.text for item in items]
        options = dict(key.settings)
        if key.seeded:  # each image samples from its own generator, whatever shares its batch
            options["generator"] = [item.generator for item in items]
        return loaded.run(pixels, texts, **options)
