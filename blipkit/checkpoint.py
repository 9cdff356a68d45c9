"""Checkpoint files: find them, stream their tensors, check their keys, write them in the reference's layout."""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from blipkit.checkpoint_files import (  # noqa: F401 - re-exported: the names callers know from here
    SAFETENSORS,
    SAFETENSORS_INDEX,
    TORCH_BIN,
    TORCH_BIN_INDEX,
    CheckpointError,
    describe_mismatch,
    weight_files,
)


class KeyMap:
    """Renames checkpoint keys between the reference's module tree and blipkit's.

    Each pair is (reference fragment, blipkit fragment); ``{}`` stands for a layer number. A fragment matches
    whole dotted segments anywhere in a key, so one table serves a part on its own and inside a larger model.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._to_ours = [self._rule(ref, ours) for ref, ours in pairs]
        self._to_reference = [self._rule(ours, ref) for ref, ours in pairs]

    @staticmethod
    def _rule(source: str, target: str) -> tuple[re.Pattern[str], str]:
        pattern = re.escape(source).replace(r"\{\}", r"(\d+)")
        return re.compile(rf"(?:(?<=\.)|^){pattern}(?=\.|$)"), target.replace("{}", r"\1")

    @staticmethod
    def _apply(rules: list[tuple[re.Pattern[str], str]], key: str) -> str:
        for pattern, replacement in rules:
            new, count = pattern.subn(replacement, key, count=1)
            if count:
                return new
        return key

    def to_ours(self, key: str) -> str:
        return self._apply(self._to_ours, key)

    def to_reference(self, key: str) -> str:
        return self._apply(self._to_reference, key)


def under(prefix: str, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A part's key pairs anchored below its attribute in a larger model (``vision_model``): the families share one
    layer vocabulary, so the ViT's ``layers.N.self_attn.o`` must not be renamed as the text encoder's is."""
    return [(f"{prefix}.{ref}", f"{prefix}.{ours}") for ref, ours in pairs]


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time, so a caller can convert and place each before reading the next."""
    if path.suffix == ".safetensors":
        yield from _map_safetensors(path)
        return
    try:
        # Only the zip format (torch >= 1.6) can be memory-mapped; the legacy pickle format is read whole.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch raises many kinds for a broken pickle or zip
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    yield from state.items()


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _map_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """A safetensors file's tensors as views of the file, mapped copy-on-write.

    Nothing is read until a tensor is used, and a weight kept in the file's dtype is the page cache's copy, not a
    second one: a 7.75 GB bf16 model loads in well under a second and never holds more than the weights.
    """

    def corrupt(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file ({reason}); it may be truncated or corrupt")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header_size = int.from_bytes(f.read(8), "little") if size >= 8 else size
        if 8 + header_size > size:
            raise corrupt(f"a {header_size}-byte header in a {size}-byte file")
        try:
            header = json.loads(f.read(header_size))
        except ValueError as e:
            raise corrupt(f"unreadable header: {e}") from e
        if not isinstance(header, dict):
            raise corrupt("the header is not a JSON object")
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + header_size else b""
    base = 8 + header_size
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype_name, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = math.prod(shape)
        except (KeyError, TypeError, ValueError) as e:
            raise corrupt(f"bad header entry for {key}: {info!r}") from e
        dtype = _SAFETENSORS_DTYPES.get(dtype_name)
        if dtype is None:
            raise CheckpointError(f"{path}: {key} has dtype {dtype_name!r}, which blipkit cannot load")
        if base + end > size or end - start != count * dtype.itemsize:
            raise corrupt(f"{key} lies outside the file or has the wrong size")
        if count == 0:
            yield key, torch.empty(shape, dtype=dtype)
        else:
            yield key, torch.frombuffer(mapping, dtype=dtype, count=count, offset=base + start).view(shape)


def save_safetensors(
    tensors: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write ``tensors`` as model.safetensors, or as shards with a model.safetensors.index.json."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    for stale in (*directory.glob("model*.safetensors"), directory / SAFETENSORS_INDEX):
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        path = directory / SAFETENSORS
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = directory / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return paths


def parse_size(size: int | str | None) -> int | None:
    """'5GB' / '500MB' / 1000 -> bytes (decimal units, as the reference reads them)."""
    if size is None or isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", size, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read shard size {size!r}; write it like '5GB' or '500MB'")
    number, unit = float(match[1]), match[2].upper()
    base = 1024 if "I" in unit else 1000
    return int(number * base ** {"K": 1, "M": 2, "G": 3}[unit[0]])
