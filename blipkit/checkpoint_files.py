"""Which files hold a checkpoint's weights, and how a key mismatch is described: no tensor library needed, so the
torch and the Keras classes share it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blipkit.hub import ModelFiles, ModelNotFoundError, read_json

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: unreadable files, missing, unexpected or mis-shaped keys."""


def weight_files(files: ModelFiles) -> list[Path]:
    """The weight files of a model, preferring safetensors, following a shard index where there is one."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (TORCH_BIN, TORCH_BIN_INDEX)):
        path = files.get(single, required=False)
        if path is not None:
            return [path]
        index_path = files.get(index, required=False)
        if index_path is not None:
            shards = sorted(set(read_index(index_path)["weight_map"].values()))
            return [files.get(shard) for shard in shards]
    raise ModelNotFoundError(
        f"{files.name} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {TORCH_BIN} or {TORCH_BIN_INDEX}"
    )


def read_index(path: Path) -> dict[str, Any]:
    index = read_json(path, CheckpointError)
    if not isinstance(index.get("weight_map"), dict):
        raise CheckpointError(f"{path} has no 'weight_map'")
    return index


def describe_mismatch(missing: list[str], unexpected: list[str], mis_shaped: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            parts.append(f"{label} keys: {shown}")
    return "; ".join(parts)
