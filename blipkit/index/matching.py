"""ITM re-scoring as BLIP's retrieval evaluation does it: candidates found by ITC similarity are ranked by
``ITM match logit + ITC cosine`` (BLIP's ``train_retrieval.py`` and LAVIS's ``compute_sim_matrix``:
``score_matrix[i, topk] = itm_head(...)[:, 1] + topk_sim``; BLIP-2: the logit averaged over the queries).

BLIP models load with ``use_enc_token=True``: BLIP was trained and evaluated with [ENC] as the ITM text's first
token (the reference keeps [CLS]).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from blipkit.tasks import TASKS, LoadedTask, checkpoint_model_type, load

PAIRS_PER_BATCH = 64  # image-text pairs per ITM call: the text encoder's cross-attention holds this many images


def load_matcher(model: str | os.PathLike, device: Any = None, dtype: Any = None, **options: Any) -> LoadedTask:
    """The retrieval model (BLIP or BLIP-2, by the checkpoint) that embeds queries and re-ranks candidates."""
    if checkpoint_model_type(model) == "blip":
        options.setdefault("use_enc_token", True)
    loaded = load(TASKS["image-text-matching"], model, device=device, dtype=dtype, **options)
    # The text encoders number positions from the first token: padding after a text leaves it as it reads alone.
    loaded.processor.tokenizer.padding_side = "right"
    return loaded


def text_tokens(loaded: LoadedTask, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """``texts`` tokenized to go with images, padded; truncated to ``max_length`` text tokens when given (BLIP's
    evaluation truncates at 35; a BLIP-2 processor's image placeholders come on top)."""
    if max_length is None:
        return loaded.tokens(texts)
    placeholders = getattr(loaded.processor, "num_query_tokens", None) or 0
    encoded = loaded.processor.encode_text(
        texts, with_images=True, padding=True, truncation=True, max_length=max_length + placeholders
    )
    return {k: v.to(loaded.model.device) for k, v in encoded.items()}


@torch.no_grad()
def match_logits(loaded: LoadedTask, image_tokens: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ITM head's logits (no, yes) for pair i - image tokens i (``read_images``) with text i: (pairs, 2),
    float32."""
    logits = []
    for start in range(0, image_tokens.shape[0], PAIRS_PER_BATCH):
        part = slice(start, start + PAIRS_PER_BATCH)
        images = image_tokens[part].to(loaded.model.device, loaded.model.dtype)
        logits.append(loaded.model.match_logits(images, **{k: v[part] for k, v in tokens.items()}).float())
    return torch.cat(logits).cpu()


def rerank_score(match_logit: torch.Tensor, itc: torch.Tensor) -> torch.Tensor:
    """BLIP's ranking score: the ITM match logit plus the ITC cosine."""
    return match_logit + itc
