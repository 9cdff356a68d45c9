"""Logits processors: small functions ``(ids, scores) -> scores``, composed in the reference's order."""

from __future__ import annotations

from collections.abc import Callable

import torch

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def repetition_penalty(penalty: float, prompt_start: torch.Tensor | None) -> Processor:
    """Divide positive (multiply negative) scores of every token already in the row by ``penalty``.

    ``prompt_start`` (rows,) skips each row's left padding, as the reference does.
    """

    def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        vocab = scores.shape[-1]
        if prompt_start is not None:
            positions = torch.arange(ids.shape[1], device=ids.device)
            ids = ids.masked_fill(positions[None, :] < prompt_start[:, None], vocab)
        ids = ids.clamp(max=vocab)  # out-of-range ids (the padding marker above) land in a spare column
        padded = torch.nn.functional.pad(scores, (0, 1))
        seen = padded.gather(1, ids)
        seen = torch.where(seen < 0, seen * penalty, seen / penalty)
        return padded.scatter(1, ids, seen)[:, :vocab]

    return apply


def no_repeat_ngram(size: int) -> Processor:
    """Forbid any token that would repeat an n-gram of ``size`` already in the row."""

    def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        if length < size:
            return scores
        prefix = ids[:, length + 1 - size :]  # the last size-1 tokens
        windows = ids.unfold(1, size, 1)  # (rows, windows, size)
        matches = (windows[..., :-1] == prefix[:, None]).all(-1)
        vocab = scores.shape[-1]
        banned = scores.new_zeros((scores.shape[0], vocab + 1), dtype=torch.bool)
        banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
        return scores.masked_fill(banned[:, :vocab], -float("inf"))

    return apply


def min_length(length: int, eos_ids: torch.Tensor) -> Processor:
    """Forbid end-of-sequence until rows (prompt included) are ``length`` tokens long."""

    def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] >= length:
            return scores
        is_eos = torch.isin(torch.arange(scores.shape[-1], device=scores.device), eos_ids)
        return torch.where(is_eos, -float("inf"), scores)

    return apply


def temperature(value: float) -> Processor:
    return lambda ids, scores: scores / value


def top_k(k: int, keep: int = 1) -> Processor:
    """Keep the ``k`` (at least ``keep``) highest scores."""
    k = max(k, keep)

    def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        threshold = torch.topk(scores, min(k, scores.shape[-1]))[0][..., -1:]
        return scores.masked_fill(scores < threshold, -float("inf"))

    return apply


def top_p(p: float, keep: int = 1) -> Processor:
    """Keep the smallest set of tokens whose probability reaches ``p`` (nucleus sampling)."""

    def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ascending, order = torch.sort(scores, descending=False)
        cumulative = ascending.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - p)
        remove[..., -keep:] = False
        return scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))

    return apply


def compose(processors: list[Processor]) -> Processor:
    def apply(ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in processors:
            scores = processor(ids, scores)
        return scores

    return apply
