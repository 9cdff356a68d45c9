"""A preallocated key/value cache for the decoder's self-attention (one per layer)."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every step so far, in buffers sized for the whole generation up front.

    ``update`` writes the new step's keys/values at the current length and returns views over all of them, so
    no step concatenates or reallocates. ``reorder`` follows beam search's choice of parents.
    """

    def __init__(
        self, rows: int, heads: int, max_length: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (rows, heads, max_length, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (rows, heads, new, head_dim) keys and values; return all so far."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"the cache holds {self.keys.shape[2]} positions; step would reach {end}")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i takes the history of row ``rows[i]`` (beam search keeps the best continuations)."""
        self.keys[:, :, : self.length] = self.keys[rows, :, : self.length]
        self.values[:, :, : self.length] = self.values[rows, :, : self.length]
