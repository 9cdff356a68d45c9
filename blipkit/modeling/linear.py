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
# PyTorch's int8-weight kernel reads input features in vector-sized blocks without a tail: with 4, 12, 20 or 36
# of them it crashed (torch 2.13, AVX2). A multiple of 64 is safe for wider vectors too, and every released
# checkpoint's widths are such multiples; other widths take the float32 path.
INT8_KERNEL_ALIGNMENT = 64
# Up to 24 rows (a batch of 8 with 3 beams) that kernel was 1.2-3x faster than float32 slices; at 48, slower.
INT8_KERNEL_MAX_ROWS = 24
_SLOW_LOW_PRECISION = not any(
    getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
)
_scratch = threading.local()


def computes_low_precision_slowly(t: torch.Tensor) -> bool:
    """Whether arithmetic on ``t``'s dtype and device is much faster done in float32 (see UPCAST_MIN_ROWS)."""
    return t.dtype in (torch.bfloat16, torch.float16) and t.device.type == "cpu" and _SLOW_LOW_PRECISION


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed in the fastest form for this many rows, dtype and device.

    With ``scale``, ``weight`` is int8 and each output feature's weights are multiplied by its scale (see
    ``blipkit.modeling.quantize``).
    """
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if weight.device.type != "cpu" and scale is not None:
        return F.linear(x, weight.to(x.dtype) * scale[:, None].to(x.dtype), bias)
    if scale is not None and rows <= INT8_KERNEL_MAX_ROWS and x.shape[-1] % INT8_KERNEL_ALIGNMENT == 0:
        return _few_rows_int8_linear(x, weight, bias, scale)
    upcast = scale is not None or (computes_low_precision_slowly(weight) and rows >= UPCAST_MIN_ROWS)
    few_rows = 1 < rows <= TRANSPOSED_MAX_ROWS and weight.device.type == "cpu"
    if few_rows and (upcast or weight.dtype == torch.float32):
        out = _transposed_linear(x.reshape(rows, -1), weight, bias, scale, upcast)
    elif upcast:
        out = _float32_linear(x.reshape(rows, -1), weight, bias, scale)
    else:
        return F.linear(x, weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0]).to(x.dtype)


def _float32_copy(weight: torch.Tensor) -> torch.Tensor:
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < weight.numel():
        buffer = _scratch.buffer = torch.empty(weight.numel(), dtype=torch.float32)
    return buffer[: weight.numel()].view(weight.shape).copy_(weight)


def _float32_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None
) -> torch.Tensor:
    """``rows @ weight.T (* scale) + bias`` in float32, a slice of input features of the weight at a time."""
    rows = rows.float()
    out = torch.zeros(rows.shape[0], weight.shape[0])
    step = max(1, UPCAST_BUFFER_ELEMENTS // weight.shape[0])
    for start in range(0, weight.shape[1], step):
        out.addmm_(rows[:, start : start + step], _float32_copy(weight[:, start : start + step]).t())
    if scale is not None:
        out.mul_(scale)
    return out if bias is None else out.add_(bias)


def _transposed_linear(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor | None, upcast: bool
) -> torch.Tensor:
    """``(weight @ rows.T (* scale) + bias).T``; with ``upcast``, in float32, a slice of output features at a time."""
    if not upcast:
        out = torch.mm(weight, rows.t()) if bias is None else torch.addmm(bias[:, None], weight, rows.t())
        return out.t().contiguous()
    rows = rows.float()
    out = torch.empty(weight.shape[0], rows.shape[0])
    step = max(1, UPCAST_BUFFER_ELEMENTS // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        torch.mm(_float32_copy(weight[start : start + step]), rows.t(), out=out[start : start + step])
    if scale is not None:
        out.mul_(scale[:, None])
    if bias is not None:
        out.add_(bias[:, None])
    return out.t().contiguous()


def _few_rows_int8_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor
) -> torch.Tensor:
    """A decode step's product with int8 weights: PyTorch's int8-weight kernel reads them as they are."""
    compute = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    rows = x.reshape(-1, x.shape[-1]).to(compute)
    out = torch.ops.aten._weight_int8pack_mm(rows, weight, scale.to(compute)).to(x.dtype)
    out = out if bias is None else out.add_(bias)
    return out.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) on ``linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
