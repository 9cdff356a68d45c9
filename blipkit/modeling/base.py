"""The base of every model: build on the meta device, load weights by assignment, save in the reference's layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from blipkit.checkpoint import (
    CheckpointError,
    KeyMap,
    describe_mismatch,
    iter_tensors,
    parse_size,
    save_safetensors,
    weight_files,
)
from blipkit.configs import BaseConfig
from blipkit.devices import check_device
from blipkit.modeling.quantize import Int8Linear, quantize_linears

M = TypeVar("M", bound="PreTrainedModel")

# The dtypes every layer has kernels for; others (float8, integers) would load and then fail at the first forward.
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class PreTrainedModel(nn.Module):
    """A model that loads and saves checkpoints in the Hugging Face format.

    Subclasses set ``config_class`` and ``key_map`` (reference names <-> our module names). A submodule with
    ``tied_suffixes`` names weights the reference keeps as aliases of others (or no longer uses): ignored on load,
    never written. A submodule's ``tied_unless_saved`` maps a weight to the one it shares storage with when the
    checkpoint does not have it (T5's LM head: tied to the embeddings in T5, saved on its own in Flan-T5).
    """

    config_class: ClassVar[type[BaseConfig]]
    key_map: ClassVar[KeyMap] = KeyMap([])

    def __init__(self, config: BaseConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point parameters' dtype (int8 weights of a quantised model aside)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def _is_quantized(self) -> bool:
        """Whether the model was loaded with ``quantize`` (some of its layers hold int8 weights)."""
        return any(isinstance(module, Int8Linear) for module in self.modules())

    def _quantised_layer(self, key: str) -> Int8Linear | None:
        """The quantised layer whose weight ``key`` names, if it is one."""
        owner_name, _, attribute = key.rpartition(".")
        owner = self.get_submodule(owner_name)
        return owner if isinstance(owner, Int8Linear) and attribute == "weight" else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def tied_reference_keys(self) -> set[str]:
        return {
            self.key_map.to_reference(f"{name}.{suffix}" if name else suffix)
            for name, module in self.named_modules()
            for suffix in getattr(module, "tied_suffixes", ())
        }

    def _optional_ties(self) -> list[tuple[nn.Module, str, str, str]]:
        """(module, target, source, target's full name) for every ``tied_unless_saved`` entry."""
        return [
            (module, target, source, f"{name}.{target}" if name else target)
            for name, module in self.named_modules()
            for target, source in getattr(module, "tied_unless_saved", {}).items()
        ]

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under the reference's key names (a weight tied to another is written once)."""
        tied = {
            full for module, target, source, full in self._optional_ties()
            if module.get_parameter(target) is module.get_parameter(source)
        }  # fmt: skip
        return {self.key_map.to_reference(k): v for k, v in self.state_dict().items() if k not in tied}

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike,
        *,
        config: BaseConfig | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        quantize: str | None = None,
        **model_kwargs: Any,
    ) -> M:
        """Load a model from a local directory or a Hub id.

        The model is built on the meta device and the checkpoint's tensors are assigned to it one by one, so
        no random initialisation is paid and peak memory stays near the size of the weights. ``dtype``
        (default float32; "auto" takes the checkpoint's) applies to floating-point weights. A checkpoint with
        missing, unexpected or mis-shaped keys raises ``CheckpointError`` unless ``strict=False``, which
        initialises missing weights as the reference would and ignores the rest. ``quantize="int8"`` stores the
        linear layers' weights as int8 (see ``blipkit.modeling.quantize``), quantised as each is read.
        """
        device = check_device(device) or torch.device("cpu")
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        if config is None:
            config = cls.config_class.from_pretrained(name_or_path, **hub)
        dtype = _resolve_dtype(dtype, config)
        with torch.device("meta"):
            model = cls(config, **model_kwargs)
            if quantize is not None:
                quantize_linears(model, quantize)
        missing, unexpected, mis_shaped = model._load_tensors(weight_files(name_or_path, **hub), dtype, device)
        if strict and (missing or unexpected or mis_shaped):
            raise CheckpointError(model._mismatch_message(name_or_path, missing, unexpected, mis_shaped))
        model._materialise_missing(dtype, device)
        return model.eval()

    def _load_tensors(
        self, files: list[Path], dtype: torch.dtype, device: torch.device
    ) -> tuple[list[str], list[str], list[str]]:
        """Assign the files' tensors to the model; return the (missing, unexpected, mis-shaped) reference keys."""
        expected = dict(self.state_dict(keep_vars=True))
        quantized = self._is_quantized
        tied = self.tied_reference_keys()
        seen: set[str] = set()
        unexpected, mis_shaped = [], []
        for path in files:
            batch: dict[str, torch.Tensor] = {}
            for ref_key, tensor in iter_tensors(path):
                if ref_key in tied:
                    continue
                key = self.key_map.to_ours(ref_key)
                target = expected.get(key)
                if target is None:
                    unexpected.append(ref_key)
                elif target.shape != tensor.shape:
                    seen.add(key)  # reported as mis-shaped, not also as missing
                    mis_shaped.append(f"{ref_key} (checkpoint {tuple(tensor.shape)}, model {tuple(target.shape)})")
                elif target.dtype == torch.int8 and tensor.is_floating_point():  # a quantised layer's weight
                    self._quantised_layer(key).load_float_weight(tensor.to(device))
                    seen.add(key)
                else:
                    converted = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
                    # A quantised model must not keep the file mapped through its other tensors: the pages of
                    # the float weights it has read would stay resident beside their int8 copies.
                    batch[key] = converted.clone() if quantized and converted is tensor else converted
                    seen.add(key)
            # Assigning per file keeps one shard's worth of tensors alive at a time.
            self.load_state_dict(batch, strict=False, assign=True)
        for module, _target, source, full in self._optional_ties():
            if full not in seen:
                shared = module.get_parameter(source)
                if quantized_layer := self._quantised_layer(full):  # its own int8 copy, no longer shared storage
                    quantized_layer.load_float_weight(shared.detach())
                else:
                    owner_name, _, attribute = full.rpartition(".")
                    setattr(self.get_submodule(owner_name), attribute, shared)
                seen.add(full)
        missing = [self.key_map.to_reference(k) for k in expected if k not in seen]
        return missing, unexpected, mis_shaped

    def _mismatch_message(
        self, source: str | os.PathLike, missing: list[str], unexpected: list[str], mis_shaped: list[str]
    ) -> str:
        name = type(self).__name__
        other = _other_model_class(self.config, name)
        if other is not None:
            # A checkpoint of another head: listing its keys (and suggesting strict=False, which would run the
            # wrong head on random weights) hides what is wrong - the task.
            from blipkit.pipelines import task_hint

            return (
                f"{source} is a {other} checkpoint{task_hint(other)}, which {name}{task_hint(name)} cannot use: "
                f"load it with {other}, or give a {name} checkpoint"
            )
        return (
            f"the checkpoint does not fit {name}: "
            + describe_mismatch(missing, unexpected, mis_shaped)
            + ". Pass strict=False to load it anyway (missing weights are then freshly initialised)."
        )

    def _materialise_missing(self, dtype: torch.dtype, device: torch.device) -> None:
        """Give weights the checkpoint lacked real storage and the reference's initialisation."""
        for module in self.modules():
            if any(p.is_meta for p in module.parameters(recurse=False)):
                if isinstance(module, Int8Linear):
                    # Initialise float parameters as the reference would; the weight is then quantised.
                    stand_in = nn.Linear(module.in_features, module.out_features, device=device, dtype=dtype)
                    self._init_weights(stand_in)
                    if module.weight.is_meta:
                        module.load_float_weight(stand_in.weight.detach())
                    if module.bias is not None and module.bias.is_meta:
                        module.bias = stand_in.bias
                    continue
                module.to_empty(device=device, recurse=False)
                module.to(dtype)
                self._init_weights(module)

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            return
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                nn.init.zeros_(param)
            else:
                nn.init.normal_(param, std=std)

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str | None = "5GB") -> None:
        """Write config.json and safetensors weights (sharded above ``max_shard_size``) the reference can load."""
        if self._is_quantized:
            raise ValueError(
                "this model was loaded with quantize='int8' and cannot be saved: int8 weights have no place in "
                "the reference's checkpoint layout. Save the model loaded without quantize, and quantise on load."
            )
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.extra["architectures"] = [type(self).__name__]
        self.config.extra["dtype"] = str(self.dtype).removeprefix("torch.")
        self.config.save_pretrained(directory)
        save_safetensors(self.reference_state_dict(), directory, parse_size(max_shard_size))


def check_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` (a torch dtype or its name) if the models can compute in it; an error naming the choices if not."""
    resolved = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if resolved not in COMPUTE_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in COMPUTE_DTYPES)
        raise ValueError(f"dtype {dtype!r} is not one blipkit models compute in: use {allowed} or 'auto'")
    return resolved


def _resolve_dtype(dtype: torch.dtype | str | None, config: BaseConfig) -> torch.dtype:
    """float32 by default, the checkpoint's for "auto"; only the dtypes the models compute in."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        dtype = config.extra.get("dtype") or config.extra.get("torch_dtype") or "float32"
    return check_dtype(dtype)


def _other_model_class(config: BaseConfig, name: str) -> str | None:
    """The blipkit model class the checkpoint was saved from (its config's ``architectures``), if not ``name``."""
    import blipkit

    architectures = config.extra.get("architectures") or []
    if name in architectures:
        return None
    return next((a for a in architectures if _is_model_class(getattr(blipkit, a, None))), None)


def _is_model_class(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, PreTrainedModel)
