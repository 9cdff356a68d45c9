"""Matrix products of activations with weights (``F.linear``), in the form that is fastest for their shape on CPUs.

Two measured effects on a 2-core AVX2 machine (numbers in the README's Performance section) decide the form:

- CPUs without bf16/fp16 matrix instructions (no AVX512-BF16, no AMX) multiply those types several times slower
  than float32: a (257 x 2560) @ (2560 x 10240) bf16 product ran at 22 GFLOP/s against 133 in float32, and a
  bf16 product costs about as much per row as a one-row product does. From UPCAST_MIN_ROWS rows on, products are
  computed in float32 from float32 copies of the weight, made a slice at a time in a reused buffer (so the copies
  cost little time and at most UPCAST_BUFFER_ELEMENTS of memory); fewer rows (a decode step with a small batch)
  stay in the weight's dtype, where reading half the bytes wins.
- For a few rows (decode steps of a batch, beams), the BLAS is up to 2.6x faster asked for ``W @ x.T`` than for
  ``x @ W.T`` (the LM head of BLIP, 30524 x 768 with 8 rows: 9.4 ms against 24.9). From TRANSPOSED_MAX_ROWS rows
  on, the usual form is faster.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

UPCAST_MIN_ROWS = 8
TRANSPOSED_MAX_ROWS = 128
UPCAST_BUFFER_ELEMENTS = 4 * 2**20
_SLOW_LOW_PRECISION = not any(
    getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
)
_scratch = threading.local()


def computes_low_precision_slowly(t: torch.Tensor) -> bool:
    """Whether arithmetic on ``t``'s dtype and device is much faster done in float32 (see UPCAST_MIN_ROWS)."""
    return t.dtype in (torch.bfloat16, torch.float16) and t.device.type == "cpu" and _SLOW_LOW_PRECISION


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed in the fastest form for this many rows, dtype and device."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    upcast = computes_low_precision_slowly(weight) and rows >= UPCAST_MIN_ROWS
    few_rows = 1 < rows <= TRANSPOSED_MAX_ROWS and weight.device.type == "cpu"
    if few_rows and (upcast or weight.dtype == torch.float32):
        out = _transposed_linear(x.reshape(rows, -1), weight, bias, upcast)
    elif upcast:
        out = _float32_linear(x.reshape(rows, -1), weight, bias)
    else:
        return F.linear(x, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def _float32_copy(weight: torch.Tensor) -> torch.Tensor:
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < weight.numel():
        buffer = _scratch.buffer = torch.empty(weight.numel(), dtype=torch.float32)
    return buffer[: weight.numel()].view(weight.shape).copy_(weight)


def _float32_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``rows @ weight.T + bias`` in float32, a slice of input features of the weight at a time."""
    rows = rows.float()
    out = torch.zeros(rows.shape[0], weight.shape[0]) if bias is None else bias.float().expand(rows.shape[0], -1)
    out = out.contiguous()
    step = max(1, UPCAST_BUFFER_ELEMENTS // weight.shape[0])
    for start in range(0, weight.shape[1], step):
        out.addmm_(rows[:, start : start + step], _float32_copy(weight[:, start : start + step]).t())
    return out


def _transposed_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, upcast: bool
) -> torch.Tensor:
    """``(weight @ rows.T + bias).T``; with ``upcast``, in float32, a slice of output features at a time."""
    if not upcast:
        out = torch.mm(weight, rows.t()) if bias is None else torch.addmm(bias[:, None], weight, rows.t())
        return out.t().contiguous()
    rows = rows.float()
    out = torch.empty(weight.shape[0], rows.shape[0])
    step = max(1, UPCAST_BUFFER_ELEMENTS // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        part = _float32_copy(weight[start : start + step])
        if bias is None:
            torch.mm(part, rows.t(), out=out[start : start + step])
        else:
            torch.addmm(bias[start : start + step, None].float(), part, rows.t(), out=out[start : start + step])
    return out.t().contiguous()


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) on ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
