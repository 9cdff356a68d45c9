"""Held-out metrics during fine-tuning, with the same metric code as ``blipkit eval``: CIDEr and BLEU-4 of greedy
captions against every caption of their image; VQA accuracy (the official formula, meaningful with VQAv2's ten
answers; left out where a question has fewer than 3) and exact match (the normalized answer equals the most given
one); retrieval recall by ITC similarity."""

from __future__ import annotations

from collections import Counter, defaultdict

import torch

from blipkit.evaluate.captions import caption_scores
from blipkit.evaluate.retrieval import Annotations, pre_caption, recall
from blipkit.evaluate.vqa import answer_accuracy, normalize_answer
from blipkit.processing.image import load_image
from blipkit.tasks import LoadedTask, generate_texts
from blipkit.train.batches import image_identity
from blipkit.train.data import Example

MAX_NEW_TOKENS = 30
OFFICIAL_MIN_ANSWERS = 3


def evaluate(loaded: LoadedTask, task: str, examples: list[Example], prompt: str, batch_size: int) -> dict[str, float]:
    if task == "caption":
        return _captions(loaded, examples, prompt, batch_size)
    if task == "vqa":
        return _answers(loaded, examples, batch_size)
    return _retrieval(loaded, examples, batch_size)


def _captions(loaded: LoadedTask, examples: list[Example], prompt: str, batch_size: int) -> dict[str, float]:
    references: dict[int, list[str]] = defaultdict(list)
    images: dict[int, str | bytes] = {}
    for example in examples:  # an image with several captions is captioned once, against all of them
        key = image_identity(example.image)
        references[key].append(example.caption)
        images.setdefault(key, example.image)
    keys = list(images)
    candidates = {}
    for start in range(0, len(keys), batch_size):
        batch = keys[start : start + batch_size]
        pixels = _pixels(loaded, [images[k] for k in batch])
        prompts = [prompt] * len(batch) if prompt else None
        texts = generate_texts(loaded, pixels, prompts, {"max_new_tokens": MAX_NEW_TOKENS})
        for key, (text,) in zip(batch, texts, strict=True):
            candidates[key] = loaded.written_after(prompt, text).strip() if prompt else text.strip()
    scores = caption_scores(candidates, dict(references), use_meteor=False)
    return {"CIDEr": scores["CIDEr"], "BLEU-4": scores["BLEU-4"]}


def _answers(loaded: LoadedTask, examples: list[Example], batch_size: int) -> dict[str, float]:
    accuracy, exact = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        answers = generate_texts(loaded, _pixels(loaded, [e.image for e in batch]), [e.question for e in batch],
                                 {"max_new_tokens": 10})  # fmt: skip
        for example, (answer,) in zip(batch, answers, strict=True):
            accuracy += answer_accuracy(answer, example.answers)
            most_given = Counter(normalize_answer(a) for a in example.answers).most_common(1)[0][0]
            exact += normalize_answer(answer) == most_given
    scores = {"exact match": 100 * exact / len(examples)}
    # The official formula counts agreeing humans (3 make an answer right): with fewer, it cannot reach 100.
    if all(len(e.answers) >= OFFICIAL_MIN_ANSWERS for e in examples):
        scores["VQA accuracy"] = 100 * accuracy / len(examples)
    return scores


def _retrieval(loaded: LoadedTask, examples: list[Example], batch_size: int) -> dict[str, float]:
    numbers: dict[int, int] = {}  # image identity -> its number
    sources, image_of, texts = [], [], []
    for example in examples:
        number = numbers.setdefault(image_identity(example.image), len(numbers))
        if number == len(sources):
            sources.append(example.image)
        image_of.append(number)
        texts.append(pre_caption(example.caption))
    model = loaded.model
    image_features = [
        model.get_image_features(_pixels(loaded, sources[start : start + batch_size]))
        for start in range(0, len(sources), batch_size)
    ]
    text_features = [
        model.get_text_features(**loaded.tokens(texts[start : start + batch_size]))
        for start in range(0, len(texts), batch_size)
    ]
    similarity = (torch.cat(image_features) @ torch.cat(text_features).t()).float().cpu()
    image_texts = [[t for t, i in enumerate(image_of) if i == image] for image in range(len(sources))]
    annotations = Annotations([str(i) for i in range(len(sources))], texts, image_of, image_texts)
    return recall(similarity, similarity.t(), annotations)


def _pixels(loaded: LoadedTask, images: list[str | bytes]) -> torch.Tensor:
    return loaded.model_pixels([loaded.image_array(load_image(image)) for image in images])
