"""What a model is, without loading it: config summary, parameter count and dtypes from the files' headers."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from blipkit.checkpoint import weight_files
from blipkit.hub import read_json, resolve_file

PART_FIELDS = {
    "vision_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"),
    "text_config": ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
    "qformer_config": ("hidden_size", "num_hidden_layers", "num_attention_heads"),
}


def describe(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> dict[str, Any]:
    config_path = resolve_file(name_or_path, "config.json", **hub_kwargs)
    config = read_json(config_path)
    files = weight_files(name_or_path, **hub_kwargs)
    parameters, dtypes = 0, Counter()
    for path in files:
        for shape, dtype in _tensor_headers(path):
            count = 1
            for dim in shape:
                count *= dim
            parameters += count
            dtypes[dtype] += count
    folder = config_path.parent
    listing = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return {
        "model": str(name_or_path),
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
