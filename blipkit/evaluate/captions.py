"""``blipkit eval caption``: the COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) of a caption job's output.

Captions are tokenized as pycocoevalcap tokenizes them (``tokenize.ptb_tokenize``), and scored as pycocoevalcap
scores them (``caption_metrics``; METEOR through its jar, where Java exists).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from blipkit.evaluate.caption_metrics import bleu, cider_d, rouge_l
from blipkit.evaluate.inputs import (
    EvaluationInputError,
    counted,
    listed,
    pair,
    read_json,
    read_jsonl,
    read_predictions,
    report_failed,
    to_stderr,
)
from blipkit.evaluate.meteor import MeteorUnavailable, meteor
from blipkit.evaluate.tokenize import ptb_tokenize

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def caption_scores(
    candidates: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    use_meteor: bool | None = None,
    warn: Callable[[str], None] = to_stderr,
) -> dict[str, float]:
    """The metrics of ``candidates`` ({id: caption}) against ``references`` ({id: [captions]}), same ids.

    ``use_meteor``: True requires METEOR (an error without Java), False skips it, None (default) computes it where
    Java and the jar exist, else leaves the key out and says why through ``warn``.
    """
    if set(candidates) != set(references):
        raise ValueError("candidates and references must have the same ids")
    if not candidates:
        raise ValueError("there are no captions to score")
    ids = list(candidates)
    tokenized = [ptb_tokenize(candidates[i]) for i in ids]
    tokenized_refs = [[ptb_tokenize(text) for text in references[i]] for i in ids]
    scores = dict(zip(METRICS[:4], bleu(tokenized, tokenized_refs), strict=True))
    if use_meteor is not False:
        try:
            scores["METEOR"] = meteor(
                [" ".join(t) for t in tokenized], [[" ".join(t) for t in r] for r in tokenized_refs]
            )
        except MeteorUnavailable as error:
            if use_meteor:
                raise
            warn(f"blipkit: no METEOR score: {error}")
    scores["ROUGE-L"] = rouge_l(tokenized, tokenized_refs)
    scores["CIDEr"] = cider_d(tokenized, tokenized_refs)
    return scores


def read_references(path: str | os.PathLike) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``({key: [captions]}, {alias: key})`` from JSONL rows with ``id`` and ``captions``, or from a COCO captions
    annotation file (``images`` with ``id`` and ``file_name``; ``annotations`` with ``image_id`` and ``caption``),
    whose images are known by their id and by their file name."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix.lower() == ".jsonl":
        return _jsonl_references(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise EvaluationInputError(
            f"{path} is not a COCO captions file (an object with 'images' and 'annotations'), "
            "nor JSON lines (.jsonl) with 'id' and 'captions'"
        )
    return _coco_references(path, data)


def _jsonl_references(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    references: dict[str, list[str]] = {}
    for number, row in enumerate(read_jsonl(path), start=1):
        if "id" not in row or "captions" not in row:
            raise EvaluationInputError(
                f"{path} line {number} has no '{'id' if 'id' not in row else 'captions'}'; "
                "expected rows with 'id' and 'captions' (a list of reference captions)"
            )
        key, captions = str(row["id"]), row["captions"]
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise EvaluationInputError(f"{path} line {number}: 'captions' must be a non-empty list of texts")
        if key in references:
            raise EvaluationInputError(f"{path} has the id {key} twice")
        references[key] = captions
    if not references:
        raise EvaluationInputError(f"{path} has no references")
    return references, {key: key for key in references}


def _coco_references(path: Path, data: dict) -> tuple[dict[str, list[str]], dict[str, str]]:
    references: dict[str, list[str]] = {}
    aliases: dict[str, str] = {}
    for image in data.get("images") or []:
        if "id" not in image:
            raise EvaluationInputError(f"{path}: an entry of 'images' has no 'id': {image}")
        key = str(image["id"])
        references.setdefault(key, [])
        aliases[key] = key
        if image.get("file_name"):
            if aliases.get(image["file_name"], key) != key:
                raise EvaluationInputError(f"{path}: two images have the file name {image['file_name']}")
            aliases[image["file_name"]] = key
    for annotation in data["annotations"]:
        if "image_id" not in annotation or not isinstance(annotation.get("caption"), str):
            raise EvaluationInputError(f"{path}: an annotation lacks 'image_id' or 'caption': {annotation}")
        key = str(annotation["image_id"])
        references.setdefault(key, []).append(annotation["caption"])
        aliases.setdefault(key, key)
    uncaptioned = [key for key, captions in references.items() if not captions]
    if uncaptioned:
        raise EvaluationInputError(
            f"{path}: {counted(len(uncaptioned), 'image')} without captions: {listed(uncaptioned)}"
        )
    if not references:
        raise EvaluationInputError(f"{path} has no annotations")
    return references, aliases


def evaluate_captions(
    predictions_path: str | os.PathLike,
    references_path: str | os.PathLike,
    use_meteor: bool | None = None,
    warn: Callable[[str], None] = to_stderr,
    strip_prompt: str | None = None,
) -> dict[str, float]:
    """The caption metrics of a caption job's output (``predictions_path``) against ``references_path``.

    Every prediction needs a reference and every reference a prediction. Failed rows (``status`` "failed") have
    no caption: they are reported through ``warn``, with their count, and not scored. ``strip_prompt``: text
    removed from the start of each caption that begins with it (case aside), as BLIP's evaluation scores only
    what follows its prompt "a picture of ".
    """
    predictions = read_predictions(predictions_path, "caption", "caption")
    references, aliases = read_references(references_path)
    paired = pair(predictions.ids, aliases, references, predictions_path, references_path)
    report_failed(predictions, warn)
    if not predictions.values:
        raise EvaluationInputError(f"every prediction in {predictions_path} failed: there is no caption to score")
    refs = {name: references[paired[name]] for name in predictions.values}
    candidates = predictions.values
    if strip_prompt and strip_prompt.strip():
        candidates = {name: _without_prompt(text, strip_prompt) for name, text in candidates.items()}
    return caption_scores(candidates, refs, use_meteor=use_meteor, warn=warn)


def _without_prompt(caption: str, prompt: str) -> str:
    head, prompt = caption.lstrip(), prompt.strip()
    if head[: len(prompt)].lower() == prompt.lower() and head[len(prompt) : len(prompt) + 1] in ("", " "):
        return head[len(prompt) :].lstrip()
    return caption
