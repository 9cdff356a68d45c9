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

Where bf16 is native, two more, measured on a 2-core Intel Xeon with avx512_bf16 (no AMX):

- Native is not always faster: there, a many-row bf16 product ran at 135-150 GFLOP/s and the same product in
  float32 at 210-265 (on an AMD EPYC of the same class, bf16 ran at about twice float32's rate). So on CPUs with
  native bf16 the row count from which float32 wins is measured once per process (``upcast_min_rows``: a short
  calibration, ~0.1 s, at the first bf16 product), not assumed. Likewise for int8 weights, whose slices are
  converted either way: there a 42-row product against a 10240 x 2560 int8 weight took 17.0 ms from float32 slices,
  21.9 from bf16 ones and 20.6 in the int8 kernel.
- A one-row bf16 product reads the weight at ~12 GB/s through ``F.linear`` but at ~17 GB/s from oneDNN's own blocked
  copy of it (streaming 2 GB of weights; 22 against 49 GB/s when they fit in cache), with the same bits out. So a
  bf16 decoder's linear weights can be kept packed (``pack_linears``; ``Form("packed")``): BLIP-2 OPT-2.7b's decode
  steps took 0.32 s instead of 0.46. Packing writes 5.3 GB of fresh memory at load, which took 4-7 s there with
  the memory warm and 17-21 s in a fresh process of that virtual machine (against 2 s to map the files), so the
  library packs when asked (``from_pretrained(pack_weights=True)``, BLIPKIT_PACKED_WEIGHTS=1) and the long-running
  commands (``serve``, batch jobs) ask.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blipkit.modeling.cpu import best_time, cpu_class, has_native_bf16, is_forced

UPCAST_MIN_ROWS = 8
TRANSPOSED_MAX_ROWS = 128
UPCAST_BUFFER_ELEMENTS = 4 * 2**20
# PyTorch's int8-weight kernel reads input features in vector-sized blocks without a tail: with 4, 12, 20 or 36
# of them it crashed (torch 2.13, AVX2). A multiple of 64 is safe for wider vectors too, and every released
# checkpoint's widths are such multiples; other widths take the float32 path.
INT8_KERNEL_ALIGNMENT = 64
# Up to 24 rows (a batch of 8 with 3 beams) that kernel was 1.2-3x faster than float32 slices; at 48, slower.
INT8_KERNEL_MAX_ROWS = 24
CPU_CLASS = cpu_class()
PACKED_WEIGHTS_VARIABLE = "BLIPKIT_PACKED_WEIGHTS"
UPCAST_ROWS_VARIABLE = "BLIPKIT_UPCAST_MIN_ROWS"
# The row counts the calibration times; more rows are taken to go the way the last count went.
CALIBRATION_ROWS = (16, 32, 64, 128, 256, 512)
# Float32 must be this much faster at a row count to be chosen, so that timing noise does not flip the choice.
CALIBRATION_MARGIN = 0.9
_SLOW_LOW_PRECISION = not has_native_bf16(CPU_CLASS)
_calibrated: dict[tuple[torch.dtype, torch.dtype], int | None] = {}  # (input, weight) dtypes
_scratch = threading.local()


def computes_low_precision_slowly(t: torch.Tensor) -> bool:
    """Whether arithmetic on ``t``'s dtype and device is much faster done in float32 (see UPCAST_MIN_ROWS)."""
    return t.dtype in (torch.bfloat16, torch.float16) and t.device.type == "cpu" and _SLOW_LOW_PRECISION


def upcast_min_rows(t: torch.Tensor, weight_dtype: torch.dtype | None = None) -> int | None:
    """The fewest rows from which products of ``t``'s dtype (as weight, or as input to ``weight_dtype`` weights:
    int8) are computed in float32 on this machine; None: never. Without native bf16, UPCAST_MIN_ROWS; with it,
    measured at the first call for the dtypes (``calibrate_upcast``) unless BLIPKIT_UPCAST_MIN_ROWS gives it ("never"
    or a row count). A forced CPU class (``cpu.cpu_class``) is not measured: its products stay native, as the
    class's are meant to."""
    if t.dtype not in (torch.bfloat16, torch.float16) or t.device.type != "cpu":
        return None
    if _SLOW_LOW_PRECISION:
        return UPCAST_MIN_ROWS
    key = (t.dtype, weight_dtype or t.dtype)
    if key not in _calibrated:
        forced = os.environ.get(UPCAST_ROWS_VARIABLE, "").strip()
        if forced:
            _calibrated[key] = _forced_rows(forced)
        else:
            _calibrated[key] = None if is_forced() else calibrate_upcast(*key)
    return _calibrated[key]


def calibrate_upcast(dtype: torch.dtype, weight_dtype: torch.dtype | None = None, features: int = 1024) -> int | None:
    """Time a ``features``-square product of ``dtype`` inputs and ``weight_dtype`` weights (default: ``dtype``) in
    ``dtype`` and in float32, as ``linear`` computes each (``dtype`` weights natively; int8 ones from slices
    converted to either), at each of CALIBRATION_ROWS; return the fewest rows from which float32 won (by
    CALIBRATION_MARGIN) at every count timed, or None. Both costs grow with the weight's size alike, so one size
    stands for all."""
    generator = torch.Generator().manual_seed(0)
    if weight_dtype == torch.int8:
        weight = torch.randint(-127, 128, (features, features), generator=generator, dtype=torch.int8)
        scale = torch.rand(features, generator=generator)
    else:
        weight, scale = torch.randn(features, features, generator=generator).to(dtype), None
    wins = []
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for rows in CALIBRATION_ROWS:
            x = torch.randn(rows, features, generator=generator).to(dtype)
            if scale is None:
                native = best_time(lambda x=x: F.linear(x, weight))
            else:
                native = best_time(lambda x=x: _sliced(x, weight, None, scale, None, dtype))
            upcast = best_time(lambda x=x: _sliced(x, weight, None, scale, None, torch.float32))
            wins.append(upcast < CALIBRATION_MARGIN * native)
    threshold = None
    for rows, won in reversed(list(zip(CALIBRATION_ROWS, wins, strict=True))):
        if not won:
            break
        threshold = rows
    return threshold


def _forced_rows(value: str) -> int | None:
    if value == "never":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ValueError(f"{UPCAST_ROWS_VARIABLE}={value!r}: give a positive row count or 'never'")


def upcasts(t: torch.Tensor, rows: int, weight_dtype: torch.dtype | None = None) -> bool:
    """Whether a product of ``rows`` rows with ``t``'s dtype is computed in float32 here (``upcast_min_rows``)."""
    threshold = upcast_min_rows(t, weight_dtype)
    return threshold is not None and rows >= threshold


@dataclass(frozen=True)
class Form:
    """How one product is computed: ``kind`` names the function in ``FORMS``; ``compute`` is the dtype its
    products run in where that is not the weight's (float32 upcasts, bf16 slices of int8 weights)."""

    kind: str
    compute: torch.dtype | None = None


def choose_form(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> Form:
    """The fastest form of ``x @ weight.T`` for this many rows, these dtypes, this device and CPU class (the
    measurements behind each threshold: the module docstring)."""
    rows = _rows(x)
    # int8 weights compute in float32 for float32 inputs, else from the row count measured for int8 weights
    upcast = upcasts(weight, rows) if scale is None else x.dtype == torch.float32 or upcasts(x, rows, weight.dtype)
    if weight.is_mkldnn:
        return Form("packed", torch.float32 if upcast else None)
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if tracked and (upcast or scale is not None or out is not None):  # autograd cannot record out= and buffers
        return Form("differentiable")
    if scale is not None and weight.device.type != "cpu":
        return Form("dequantized")
    if scale is not None and rows <= INT8_KERNEL_MAX_ROWS and x.shape[-1] % INT8_KERNEL_ALIGNMENT == 0:
        return Form("int8-kernel")
    few_rows = 1 < rows <= TRANSPOSED_MAX_ROWS and weight.device.type == "cpu"
    if few_rows and (upcast or weight.dtype == torch.float32):
        return Form("transposed", torch.float32 if upcast else None)
    if upcast or scale is not None:
        return Form("sliced", torch.float32 if upcast else x.dtype)
    return Form("plain")


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, computed in the fastest form for this many rows, dtype and device.

    With ``scale``, ``weight`` is int8 and each output feature's weights are multiplied by its scale (see
    ``blipkit.modeling.quantize``). With ``out`` (contiguous, of the result's shape), the result is written there
    and ``out`` returned: layers reuse one buffer for outputs too large to allocate afresh every time
    (``blipkit.modeling.layers.Workspace``). ``out`` may be float32 for a bf16 ``x``: products computed in float32
    then skip the rounding to bf16.
    """
    form = choose_form(x, weight, bias, scale, out)
    return FORMS[form.kind](x, weight, bias, scale, out, form.compute)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def _shape(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...]:
    return (*x.shape[:-1], weight.shape[0])


def _differentiable(x, weight, bias, scale, out, compute) -> torch.Tensor:
    """The product for autograd, which cannot record the ``out=`` kernels and reused buffers of the other forms:
    in float32 from float32 copies (kept for the backward pass) where the low precision is slow."""
    if scale is not None:
        weight = weight.to(x.dtype) * scale[:, None].to(x.dtype)
    if upcasts(x, _rows(x)):
        product = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return _written(product, out, product.shape, x.dtype)
    return _autocast_aware(F.linear(x, weight, bias), out, x)


def _dequantized(x, weight, bias, scale, out, compute) -> torch.Tensor:
    """int8 weights off the CPU: multiplied out to ``x``'s dtype (GPUs have no int8-weight kernel here)."""
    product = F.linear(x, weight.to(x.dtype) * scale[:, None].to(x.dtype), bias)
    return _written(product, out, _shape(x, weight), x.dtype)


def _int8_kernel(x, weight, bias, scale, out, compute) -> torch.Tensor:
    """A decode step's product with int8 weights: PyTorch's int8-weight kernel reads them as they are."""
    activations = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    rows = x.reshape(-1, x.shape[-1]).to(activations)
    product = torch.ops.aten._weight_int8pack_mm(rows, weight, scale.to(activations)).to(x.dtype)
    product = product if bias is None else product.add_(bias)
    return _written(product, out, _shape(x, weight), x.dtype)


def _transposed(x, weight, bias, scale, out, compute) -> torch.Tensor:
    """``weight @ rows.T (* scale) + bias``: for few rows the BLAS is faster asked this way round; with a
    ``compute`` of float32, from float32 copies of the weight a slice of output features at a time."""
    rows = x.reshape(_rows(x), -1)
    if compute is None:
        product = torch.mm(weight, rows.t()) if bias is None else torch.addmm(bias[:, None], weight, rows.t())
        return _written(product.t(), out, _shape(x, weight), x.dtype)
    rows = rows.float()
    product = torch.empty(weight.shape[0], rows.shape[0])
    step = max(1, UPCAST_BUFFER_ELEMENTS // weight.shape[1])
    for start in range(0, weight.shape[0], step):
        torch.mm(_weight_copy(weight[start : start + step]), rows.t(), out=product[start : start + step])
    if scale is not None:
        product.mul_(scale[:, None])
    if bias is not None:
        product.add_(bias[:, None])
    return _written(product.t(), out, _shape(x, weight), x.dtype)


def _sliced(x, weight, bias, scale, out, compute) -> torch.Tensor:
    """``out = rows @ weight.T (* scale) + bias`` in the ``compute`` dtype (float32 for bf16 weights on CPUs slow at
    bf16; bf16 for int8 weights on CPUs fast at it - int8 values are exact in bf16): a slice of output features'
    weights at a time is copied to ``compute``, and multiplied with a chunk of rows at a time into a reused tile
    that is then written into ``out``. No copy of the whole output is made (for a ViT's MLP on 8 images, 56 MB a
    layer); chunks of rows, unlike slices of output features, keep the products as fast as one whole product. An
    ``out`` of the ``compute`` dtype takes each slice's product straight into its columns, without a tile."""
    out = out if out is not None else torch.empty(_shape(x, weight), dtype=x.dtype)
    rows, flat_out = _converted_rows(x, compute), out.view(_rows(x), -1)
    step = max(1, UPCAST_BUFFER_ELEMENTS // max(1, weight.shape[1]))
    for start in range(0, weight.shape[0], step):
        stop = min(start + step, weight.shape[0])
        weight_slice = _weight_copy(weight[start:stop], compute)
        bias_part, scale_part = _part(bias, start, stop), _part(scale, start, stop)
        if flat_out.dtype == compute:
            _product_into(flat_out[:, start:stop], rows, weight_slice, bias_part, scale_part)
            continue
        chunk = max(1, UPCAST_BUFFER_ELEMENTS // (stop - start))
        for first in range(0, rows.shape[0], chunk):
            last = min(first + chunk, rows.shape[0])
            tile = _scratch_tensor("tile", (last - first) * (stop - start), compute).view(last - first, stop - start)
            flat_out[first:last, start:stop] = _product_into(
                tile, rows[first:last], weight_slice, bias_part, scale_part
            )
    return out


def _product_into(
    target: torch.Tensor,
    rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """``target = rows @ weight.T (* scale) + bias``, in place; ``target`` may be a block of columns of a row-major
    matrix (the BLAS writes it directly: its leading dimension is the whole row)."""
    torch.mm(rows, weight.t(), out=target)
    if scale is not None:
        target.mul_(scale)
    if bias is not None:
        target.add_(bias)
    return target


def _part(vector: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return None if vector is None else vector[start:stop]


def _converted_rows(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x``'s rows in ``dtype``, converted into a reused buffer: in a BLIP-2 caption, converting the ViT-g's inputs
    to products into fresh tensors took 179-322 ms against 9-20 into the buffer (profiler, avx512_bf16 Xeon)."""
    rows = x.reshape(_rows(x), -1)
    if rows.dtype == dtype:
        return rows
    return _scratch_tensor("rows", rows.numel(), dtype).view(rows.shape).copy_(rows)


def _plain(x, weight, bias, scale, out, compute) -> torch.Tensor:
    """``F.linear``; into ``out`` with what F.linear runs for a contiguous input (the same kernel, the same bits)."""
    if out is None or out.dtype != x.dtype:
        return _autocast_aware(F.linear(x, weight, bias), out, x)
    flat_x, flat_out = x.reshape(_rows(x), -1), out.view(_rows(x), -1)
    if bias is None:
        torch.mm(flat_x, weight.t(), out=flat_out)
    else:
        torch.addmm(bias, flat_x, weight.t(), out=flat_out)
    return out


def _packed(x, weight, bias, scale, out, compute) -> torch.Tensor:
    """oneDNN's product with a weight it packed (``pack_linears``): bf16 inputs only, and no autograd through it;
    anything else multiplies a dense copy, as does a product with ``compute`` float32 (rows enough for float32 to be
    faster here; the copy costs what one row of the product does)."""
    differentiated = torch.is_grad_enabled() and x.requires_grad
    if compute is not None and not differentiated:
        return _sliced(x, weight.to_dense(), bias, scale, out, compute)
    if x.dtype != torch.bfloat16 or differentiated:
        return _autocast_aware(F.linear(x, weight.to_dense(), bias), out, x)
    product = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return _written(product, out, product.shape, x.dtype)


FORMS = {
    "packed": _packed,
    "differentiable": _differentiable,
    "dequantized": _dequantized,
    "int8-kernel": _int8_kernel,
    "transposed": _transposed,
    "sliced": _sliced,
    "plain": _plain,
}


def _written(
    product: torch.Tensor, out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """``product`` (any strides and dtype) as a contiguous ``dtype`` tensor of ``shape``; in ``out`` if given."""
    if out is None:
        if product.dtype == dtype and product.is_contiguous():
            return product.view(shape)
        out = torch.empty(shape, dtype=dtype, device=product.device)
    out.view(product.shape).copy_(product)
    return out


def _autocast_aware(product: torch.Tensor, out: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """F.linear's result as it is - in autocast's dtype where autocast is on (bf16 from float32 weights, as
    mixed-precision training wants: casting it back would double the memory traffic of every later op) - or in
    ``out``."""
    return product if out is None else _written(product, out, product.shape, x.dtype)


def _scratch_tensor(name: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A buffer of at least ``numel`` elements, kept per thread and dtype and reused by every product."""
    key = f"{name}.{dtype}"
    buffer = getattr(_scratch, key, None)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=dtype)
        setattr(_scratch, key, buffer)
    return buffer[:numel]


def _weight_copy(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return _scratch_tensor("weight", weight.numel(), dtype).view(weight.shape).copy_(weight)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and keys) on ``linear``."""

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, out=out)


def packs_weights(dtype: torch.dtype, device: torch.device, default: bool = False) -> bool:
    """Whether ``from_pretrained`` packs a decoder's weights for a model of this dtype on this device: where bf16 is
    native, when BLIPKIT_PACKED_WEIGHTS says so ("1" or "0"), else as ``default`` (the caller's: on for the
    long-running commands, off for the library, since packing costs time at load; see the module docstring)."""
    native = has_native_bf16(CPU_CLASS) and torch.backends.mkldnn.is_available()
    setting = os.environ.get(PACKED_WEIGHTS_VARIABLE, "").strip()
    if setting not in ("", "0", "1"):
        raise ValueError(f"{PACKED_WEIGHTS_VARIABLE}={setting!r}: give 1 (pack) or 0 (do not)")
    wanted = default if not setting else setting == "1"
    return wanted and dtype == torch.bfloat16 and torch.device(device).type == "cpu" and native


def packable_weights(model: nn.Module, part: str = "") -> set[str]:
    """The names of the weights ``pack_linears`` would pack: those of the ``Linear`` layers under ``part`` (a
    submodule's name; "" for all) that no other module shares (a tied head stays dense). Works on a model built on
    the meta device, before loading."""
    uses: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
    return {
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if type(module) is Linear and uses[id(module.weight)] == 1 and (not part or name.startswith(f"{part}."))
    }


def packed(weight: torch.Tensor) -> nn.Parameter:
    """oneDNN's packed copy of a bf16 ``weight`` (out_features x in_features), for ``Form("packed")``."""
    return nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1), requires_grad=False)


def pack_linears(model: nn.Module, part: str = "") -> None:
    """Replace the bf16 weights of the ``Linear`` layers under ``part`` of ``model`` by oneDNN's packed copies (the
    same values; the dense ones are freed), as ``from_pretrained`` does for a model's decoder while it loads.
    Inference only: ``unpack_linears`` undoes it, as ``PreTrainedModel.train()`` does."""
    for name in packable_weights(model, part):
        owner, _, attribute = name.rpartition(".")
        module = model.get_submodule(owner)
        weight = getattr(module, attribute)
        if weight.dtype == torch.bfloat16 and not weight.is_mkldnn:
            setattr(module, attribute, packed(weight))


def unpack_linears(model: nn.Module) -> None:
    """Dense weights again (trainable), for training or for whatever needs a plain tensor."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_mkldnn:
            module.weight = nn.Parameter(weight.to_dense())
