"""A key/value cache for the decoder's self-attention (one per layer), grown in chunks as decoding goes."""

from __future__ import annotations

import torch

# Positions a buffer holds beyond the prompt when first allocated: common generations (20-30 new tokens) never grow.
FIRST_ROOM = 64


def grown_capacity(capacity: int, needed: int, max_length: int) -> int:
    """The next size of a buffer along its sequence axis that holds ``needed`` positions: at least doubled, so the
    copies growth costs add up to less than one buffer's worth per position (amortised), never past ``max_length``
    - a generation asked for up to 10**9 new tokens allocates only what it reaches."""
    return min(max_length, max(2 * capacity, needed + FIRST_ROOM))


class KVCache:
    """Keys and values of every step so far, in buffers with room for more steps, allocated on the first update.

    ``update`` writes the new step's keys/values at the current length and returns views over all of them; a step
    that does not fit grows the buffers (by doubling, so rarely: no step concatenates). ``reorder`` follows beam
    search's choice of parents.
    """

    def __init__(
        self, rows: int, heads: int, max_length: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.max_length = max_length
        self.keys = torch.empty((rows, heads, 0, head_dim), dtype=dtype, device=device)
        self.values = torch.empty_like(self.keys)
        self.length = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (rows, heads, new, head_dim) keys and values; return all so far."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            self._grow(end)
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i takes the history of row ``rows[i]`` (beam search keeps the best continuations)."""
        self.keys[:, :, : self.length] = self.keys[rows, :, : self.length]
        self.values[:, :, : self.length] = self.values[rows, :, : self.length]

    def _grow(self, needed: int) -> None:
        if needed > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} positions; step would reach {needed}")
        capacity = grown_capacity(self.keys.shape[2], needed, self.max_length)
        self.keys = _widened(self.keys, capacity, self.length)
        self.values = _widened(self.values, capacity, self.length)


def _widened(buffer: torch.Tensor, capacity: int, length: int) -> torch.Tensor:
    """A (rows, heads, capacity, head_dim) buffer holding ``buffer``'s first ``length`` positions."""
    rows, heads, _, head_dim = buffer.shape
    wider = buffer.new_empty((rows, heads, capacity, head_dim))
    wider[:, :, :length] = buffer[:, :, :length]
    return wider
