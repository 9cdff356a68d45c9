"""What a model is, without loading it (config summary, parameter count and dtypes from the files' headers), and
which form each product and attention takes on this machine."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from blipkit.hub import ModelFiles, read_json

PART_FIELDS = {
    "vision_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"),
    "text_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
    "qformer_config": ("hidden_size", "num_hidden_layers", "num_attention_heads"),
}


def describe(name_or_path: str | os.PathLike | ModelFiles, **hub_kwargs: Any) -> dict[str, Any]:
    files = ModelFiles.open(name_or_path, **hub_kwargs)
    config_path = files.get("config.json")
    config = read_json(config_path)
    parameters, dtypes = 0, Counter()
    for path in files.weights():
        for shape, dtype in _tensor_headers(path):
            count = 1
            for dim in shape:
                count *= dim
            parameters += count
            dtypes[dtype] += count
    folder = config_path.parent
    listing = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {
        "model": str(files.name),
        "model_type": config.get("model_type", "unknown"),
        "architectures": config.get("architectures") or [],
        "parts": {
            key.removesuffix("_config"): {f: config[key][f] for f in fields if f in config[key]}
            for key, fields in PART_FIELDS.items()
            if isinstance(config.get(key), dict)
        },
        "parameters": parameters,
        "dtypes": [d for d, _ in dtypes.most_common()],
        "files": listing,
    }


def _tensor_headers(path):
    """(shape, dtype name) of every tensor; safetensors are read from the header alone."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                piece = f.get_slice(key)
                yield piece.get_shape(), _DTYPES.get(piece.get_dtype(), piece.get_dtype().lower())
        return
    from blipkit.checkpoint import iter_tensors

    for _, tensor in iter_tensors(path):
        yield tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")


_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I64": "int64", "F64": "float64"}


def speed_choices() -> dict[str, str]:
    """The form each kind of product and attention takes here, as decided from this CPU's class and the measurements
    that refine it: asked of the same functions the layers call (``linear.choose_form``,
    ``layers.eager_attention_is_faster``), so what this prints is what runs."""
    import torch

    from blipkit.modeling import cpu, linear

    detected = cpu.detect()
    bf16 = torch.empty(1, 1, 1, 1, dtype=torch.bfloat16)
    slow = linear.computes_low_precision_slowly(bf16)
    many = linear.TRANSPOSED_MAX_ROWS + 1
    choices = {
        "cpu class": f"{linear.CPU_CLASS} (forced by {cpu.ENVIRONMENT_VARIABLE}; detected {detected})"
        if cpu.is_forced()
        else f"{linear.CPU_CLASS} (detected)",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} threads, kernels for "
        f"{torch.backends.cpu.get_cpu_capability()}",
    }
    choices["bf16 products computed in float32"] = _upcast_rule(bf16)
    choices["int8 products in a bf16 model computed in float32"] = _upcast_rule(bf16, torch.int8)
    for name, dtype in (("bf16", torch.bfloat16), ("float32", torch.float32)):
        for rows in (1, linear.UPCAST_MIN_ROWS, many):
            choices[f"{name} products, {rows} row{'s' if rows > 1 else ''}"] = _product_form(dtype, dtype, rows)
    for rows in (linear.INT8_KERNEL_MAX_ROWS, many):
        choices[f"int8 products in a bf16 model, {rows} rows"] = _product_form(torch.bfloat16, torch.int8, rows)
    choices["bf16 attention, few queries"] = _eager_rule(bf16)
    choices["other attention"] = "SDPA"
    choices["image keys/values a bf16 decoder reads"] = "float32" if slow else "bf16"
    choices["bf16 patch convolution"] = "float32" if slow else "bf16"
    cpu_device = torch.device("cpu")
    packed = {
        "serve and jobs": linear.packs_weights(torch.bfloat16, cpu_device, default=True),
        "from_pretrained": linear.packs_weights(torch.bfloat16, cpu_device),
    }
    variable = linear.PACKED_WEIGHTS_VARIABLE
    for where, packs in packed.items():
        choices[f"bf16 decoder weights, {where}"] = f"packed by oneDNN ({variable}=0/1)" if packs else "dense"
    return choices


def _eager_rule(bf16) -> str:
    """Up to how many queries bf16 attention is matmul-softmax-matmul here, and how that was decided."""
    from blipkit.modeling import layers

    queries = 0
    for count in range(1, layers.EAGER_MAX_QUERIES + 1):  # asked of the function attend asks
        if not layers.eager_attention_is_faster(bf16.expand(1, 1, count, 1)):
            break
        queries = count
    how = _how_decided(bf16, None)
    return f"matmul-softmax-matmul up to {queries} queries ({how})" if queries else f"SDPA ({how})"


def _how_decided(bf16, variable: str | None) -> str:
    """How a choice that refines the CPU class was made: by the class, an environment variable, or measuring."""
    from blipkit.modeling import cpu, linear

    if linear.computes_low_precision_slowly(bf16):
        return "no native bf16"
    if variable and os.environ.get(variable, "").strip():
        return f"set by {variable}"
    if cpu.is_forced():
        return "not measured: the CPU class is forced"
    return "measured in this process"


def _upcast_rule(bf16, weight_dtype=None) -> str:
    """From how many rows bf16 products (with ``weight_dtype`` weights) run in float32 here, and how it was decided."""
    from blipkit.modeling import linear

    rows = linear.upcast_min_rows(bf16, weight_dtype)
    how = _how_decided(bf16, linear.UPCAST_ROWS_VARIABLE)
    return f"never ({how})" if rows is None else f"from {rows} rows ({how})"


def _product_form(dtype, weight_dtype, rows: int) -> str:
    """In words, the form ``linear`` takes for ``rows`` rows of ``dtype`` against a ``weight_dtype`` weight."""
    import torch

    from blipkit.modeling.linear import choose_form

    x = torch.zeros(rows, 64, dtype=dtype)
    weight = torch.zeros(64, 64, dtype=weight_dtype)
    scale = torch.ones(64) if weight_dtype == torch.int8 else None
    with torch.no_grad():
        form = choose_form(x, weight, scale=scale)
    compute = f" in {str(form.compute).removeprefix('torch.')}" if form.compute is not None else ""
    return {
        "plain": "x @ W.T",
        "transposed": f"W @ x.T{compute}",
        "sliced": f"x @ W.T{compute}, from weight slices",
        "int8-kernel": "int8-weight kernel, bf16 activations",
    }.get(form.kind, form.kind)
