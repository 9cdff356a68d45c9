"""Image-text retrieval recall as BLIP's evaluation computes it, on the Karpathy-split JSON layout.

The procedure (BLIP's ``train_retrieval.py`` ``evaluation`` and ``itm_eval``, LAVIS's ``compute_sim_matrix``):
captions are cleaned (``pre_caption``: lower case, ``.!"()*#:;~`` to spaces, at most 30 words) and tokenized to at
most 35 tokens; every image and text is embedded (ITC); for each image, its ``k_test`` most similar texts are
re-scored by ``ITM match logit + ITC`` (every other text: -100), and likewise the ``k_test`` most similar images of
each text. Text retrieval (TR@K): an image counts when any of its captions ranks within K; image retrieval (IR@K):
a caption counts when its image does.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blipkit.index.matching import load_matcher, match_logits, rerank_score, text_tokens
from blipkit.index.search import similarities

MAX_WORDS = 30  # BLIP's retrieval test sets keep the first 30 words of a caption
MAX_TOKENS = 35  # and tokenize at most 35
UNSCORED = -100.0  # the score of a pair outside the top k_test, as BLIP fills its matrices
TEXTS_PER_BATCH = 256


@dataclass(frozen=True)
class Annotations:
    images: list[str]  # paths, in the JSON's order
    texts: list[str]  # every caption, cleaned, image by image
    text_image: list[int]  # the image of each text
    image_texts: list[list[int]]  # the texts of each image


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """BLIP's caption cleaning for evaluation."""
    caption = re.sub(r"\s{2,}", " ", re.sub(r"[.!\"()*#:;~]", " ", caption.lower())).rstrip("\n").strip(" ")
    return " ".join(caption.split(" ")[:max_words])


def read_annotations(path: str | os.PathLike, images: str | os.PathLike) -> Annotations:
    """A Karpathy-split test file (a JSON list of ``{"image": relative path, "caption": [captions]}``), images under
    the folder ``images``."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read annotations {path}: {error}") from None
    valid = isinstance(entries, list) and all(isinstance(e, dict) and {"image", "caption"} <= e.keys() for e in entries)
    if not valid:
        raise ValueError(f"{path} is not a Karpathy-split file: expected a list of {{'image', 'caption'}} objects")
    paths, texts, text_image, image_texts = [], [], [], []
    for number, entry in enumerate(entries):
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        paths.append(str(Path(images) / entry["image"]))
        image_texts.append(list(range(len(texts), len(texts) + len(captions))))
        texts += [pre_caption(c) for c in captions]
        text_image += [number] * len(captions)
    return Annotations(paths, texts, text_image, image_texts)


@torch.no_grad()
def score_matrices(loaded: Any, annotations: Annotations, k_test: int = 256, batch_size: int = 16, progress=None):
    """BLIP's two score matrices, (images, texts) and (texts, images): ITM match logit + ITC for each row's
    ``k_test`` most similar candidates, -100 elsewhere."""
    model = loaded.model
    image_tokens, image_embeds = [], []
    for start in range(0, len(annotations.images), batch_size):
        batch = annotations.images[start : start + batch_size]
        tokens, embeds = model.read_images(loaded.pixel_values(batch))
        image_tokens.append(tokens)  # kept for ITM, as BLIP keeps its image features (COCO 5k, ViT-B: 4.4 GB bf16)
        image_embeds.append(embeds.float().cpu())
        if progress:
            progress(len(batch))
    image_tokens, image_embeds = torch.cat(image_tokens), torch.cat(image_embeds)
    text_ids, text_embeds = [], []
    for start in range(0, len(annotations.texts), TEXTS_PER_BATCH):
        tokens = text_tokens(loaded, annotations.texts[start : start + TEXTS_PER_BATCH], MAX_TOKENS)
        text_embeds.append(model.get_text_features(**tokens).float().cpu())
        text_ids.append({k: v.cpu() for k, v in tokens.items()})
    text_embeds = torch.cat(text_embeds)
    width = max(t["input_ids"].shape[1] for t in text_ids)
    texts = {k: torch.cat([_pad(t[k], width) for t in text_ids]) for k in text_ids[0]}
    # (images, texts): BLIP's cosine; BLIP-2's best query (similarities takes the rows' query axis)
    sims = torch.stack([similarities(image_embeds, text) for text in text_embeds], dim=1)
    k = min(k_test, sims.shape[1])
    i2t = torch.full(sims.shape, UNSCORED)
    for i in range(sims.shape[0]):
        top_sim, top = sims[i].topk(k)
        logits = match_logits(loaded, image_tokens[i].expand(k, -1, -1), {n: v[top] for n, v in texts.items()})
        i2t[i, top] = rerank_score(logits[:, 1], top_sim)
    k = min(k_test, sims.shape[0])
    t2i = torch.full(sims.t().shape, UNSCORED)
    for j in range(sims.shape[1]):
        top_sim, top = sims[:, j].topk(k)
        tokens = {n: v[j : j + 1].expand(k, -1) for n, v in texts.items()}
        t2i[j, top] = rerank_score(match_logits(loaded, image_tokens[top], tokens)[:, 1], top_sim)
    return i2t, t2i


def _pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    # input_ids pad with 0 ([PAD] in BERT); the attention mask's 0 keeps the padding out either way
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))


def recall(i2t: torch.Tensor, t2i: torch.Tensor, annotations: Annotations) -> dict[str, float]:
    """BLIP's ``itm_eval``: TR@1/5/10, IR@1/5/10 (percent) and their means."""
    order = i2t.argsort(dim=1, descending=True)
    ranks = [min((order[i] == t).nonzero().item() for t in texts) for i, texts in enumerate(annotations.image_texts)]
    text_ranks = torch.tensor(ranks)
    order = t2i.argsort(dim=1, descending=True)
    image_ranks = torch.tensor([(order[j] == i).nonzero().item() for j, i in enumerate(annotations.text_image)])
    result = {}
    for name, ranks in (("txt", text_ranks), ("img", image_ranks)):
        for k in (1, 5, 10):
            result[f"{name}_r{k}"] = 100.0 * (ranks < k).float().mean().item()
        result[f"{name}_r_mean"] = sum(result[f"{name}_r{k}"] for k in (1, 5, 10)) / 3
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


def evaluate(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    model: str | os.PathLike,
    k_test: int = 256,
    batch_size: int = 16,
    device: Any = None,
    dtype: Any = None,
    progress: bool = False,
) -> dict[str, float]:
    """R@1/5/10 both ways for ``model`` on a Karpathy-split test set (see the module docstring)."""
    if k_test < 1:
        raise ValueError(f"k_test must be at least 1, got {k_test}")
    data = read_annotations(annotations, images)
    loaded = load_matcher(model, device, dtype)
    from tqdm import tqdm

    with tqdm(total=len(data.images), desc="images", unit="img", disable=not progress, file=sys.stderr) as bar:
        i2t, t2i = score_matrices(loaded, data, k_test, batch_size, bar.update)
    return recall(i2t, t2i, data)
