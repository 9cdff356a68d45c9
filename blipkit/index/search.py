"""Exact search over an index's vectors: similarities as the retrieval models define them, top-k, near-duplicates.

Vectors are normalized, so every similarity is a dot product. BLIP has one vector per image and per text. BLIP-2
has one per query for an image: a text scores an image by the image's best query (``Blip2ForImageTextRetrieval``'s
ITC), and two images compare query by query (the mean of the 32 same-query cosines: 1 for the same image).
"""

from __future__ import annotations

import torch

DEDUP_CHUNK = 1024  # rows compared with all the others at a time: (chunk, rows) scores in memory


def similarities(rows: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Each row's similarity with ``query``: (rows,). ``rows`` is (n, dim) or (n, queries, dim); ``query`` is (dim,)
    or (queries, dim) - a BLIP-2 image."""
    if rows.dim() == 2 and query.dim() == 1:
        return rows @ query
    if rows.dim() == 3 and query.dim() == 1:  # a text against BLIP-2 images: the best query
        return (rows.flatten(0, 1) @ query).view(rows.shape[:2]).amax(dim=1)  # one 2-D product
    if rows.dim() == 2:  # texts against a BLIP-2 image: the image's best query for each text
        return (rows @ query.t()).amax(dim=1)
    return rows.flatten(1) @ query.flatten() / rows.shape[1]  # BLIP-2 image against images, query by query


def top_k(scores: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> tuple[list[int], list[float]]:
    """The positions and scores of the ``k`` best rows, best first; ``allowed`` (bool, per row) keeps out the rest."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
        k = min(k, int(allowed.sum()))
    values, positions = scores.topk(min(k, scores.shape[0]))
    return positions.tolist(), values.tolist()


def duplicate_groups(rows: torch.Tensor, threshold: float) -> list[list[int]]:
    """Groups of rows linked by similarity >= ``threshold`` (linked through any chain of pairs), each sorted, the
    groups by their first row; rows without a near-duplicate are in none. Exact: every pair is compared, a chunk of
    rows at a time."""
    flat = rows.flatten(1) / (rows.shape[1] if rows.dim() == 3 else 1) ** 0.5  # query-by-query mean, as above
    parent = list(range(rows.shape[0]))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, flat.shape[0], DEDUP_CHUNK):
        scores = flat[start : start + DEDUP_CHUNK] @ flat.t()  # (chunk, rows)
        for i, j in (scores >= threshold).nonzero().tolist():
            a, b = root(start + i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(parent)):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
