"""Read and write the Hugging Face checkpoint layout from Keras variables, with numpy alone (no torch)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from blipkit.checkpoint_files import SAFETENSORS, CheckpointError, describe_mismatch
from blipkit.tf.layers import TRANSPOSED, CheckpointVariable

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) pairs of a safetensors file, mapped rather than read; bfloat16 comes out as float32 (numpy has
    no bfloat16, and these models compute in float32)."""
    try:
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from e
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    for key, entry in header.items():
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: {key} has dtype {entry['dtype']}, which the Keras classes cannot read")
        start, end = entry["data_offsets"]
        array = data[start:end].view(dtype).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        yield key, array


def load_variables(
    variables: list[CheckpointVariable], files: list[Path], ignored: set[str]
) -> tuple[list[str], list[str], list[str]]:
    """Assign each checkpoint tensor to the variable of its key; return the missing, unexpected and mis-shaped keys.
    ``ignored``: keys the reference saves as aliases of others (a tied LM head's decoder)."""
    by_key = {v.key: v for v in variables}
    seen: set[str] = set()
    unexpected, mis_shaped = [], []
    for path in files:
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path} is a PyTorch pickle; the Keras classes read safetensors only. Write them once with torch: "
                "blipkit's (or transformers') from_pretrained(...).save_pretrained(directory)"
            )
        for key, array in read_safetensors(path):
            if key in ignored:
                continue
            slot = by_key.get(key)
            if slot is None:
                unexpected.append(key)
                continue
            seen.add(key)
            value = array.T if slot.layout == TRANSPOSED else array
            if tuple(value.shape) != tuple(slot.variable.shape):
                shape = tuple(value.T.shape if slot.layout == TRANSPOSED else value.shape)
                expected = tuple(slot.variable.shape[::-1] if slot.layout == TRANSPOSED else slot.variable.shape)
                mis_shaped.append(f"{key} (checkpoint {shape}, model {expected})")
                continue
            slot.variable.assign(np.asarray(value, dtype=slot.variable.dtype))
    missing = [key for key in by_key if key not in seen]
    return missing, unexpected, mis_shaped


def save_variables(variables: list[CheckpointVariable], directory: Path) -> Path:
    """Write the variables as model.safetensors in torch's layout (the file transformers and blipkit load)."""
    from safetensors.numpy import save_file

    tensors = {}
    for slot in variables:
        value = np.asarray(slot.variable.numpy())
        # np.array, not np.ascontiguousarray: that makes a scalar (BlipModel's logit_scale) one-dimensional.
        tensors[slot.key] = np.array(value.T if slot.layout == TRANSPOSED else value, order="C")
    path = directory / SAFETENSORS
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def mismatch_message(name: str, source: str, architecture: str | None, expected: str, mismatch: tuple) -> str:
    if architecture and architecture != expected:
        return f"{source} is a {architecture} checkpoint, which {name} cannot use: load it with TF{architecture}"
    return f"the checkpoint at {source} does not fit {name}: " + describe_mismatch(*mismatch)
