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
)
from blipkit.configs import BaseConfig
from blipkit.devices import check_device, device_from_map
from blipkit.hub import ModelFiles
from blipkit.modeling.layers import CheckpointableLayer
from blipkit.modeling.linear import packable_weights, packed, packs_weights, unpack_linears
from blipkit.modeling.quantize import QUANTIZE_METHODS, Int8Linear, quantize_linears

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
    supports_gradient_checkpointing: ClassVar[bool] = True  # as the reference's models declare it
    # The submodule ("": the whole model) that generates a token a step. Its products have a few rows, so where bf16
    # is native its bf16 linear weights are loaded packed, which one-row products read faster (``linear.packed``).
    decoder_part: ClassVar[str | None] = None

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

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """The number of parameters, as the reference counts them: all, or those that train, with or without the
        embedding tables (``transformers.Trainer`` counts FLOPs without them)."""
        tables = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(
            p.numel() for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in tables
        )

    def gradient_checkpointing_enable(
        self,
        gradient_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute transformer layers' activations during backward instead of keeping them from the forward pass
        (see ``CheckpointableLayer``): in training, less memory for about one more forward pass. Every layer by
        default, or every ``every_n_layers``-th. ``gradient_checkpointing_kwargs`` go to
        ``torch.utils.checkpoint.checkpoint`` (default ``use_reentrant=False``). As the reference's method;
        ``offload=True`` (its activations in host memory) is not supported.
        """
        if offload:
            raise ValueError("offload=True is not supported: blipkit keeps checkpointed activations where they are")
        if every_n_layers < 1:
            raise ValueError(f"every_n_layers must be at least 1, got {every_n_layers}")
        options = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for index, layer in enumerate(self._checkpointable_layers()):
            layer.checkpoint_options = options if index % every_n_layers == 0 else None

    def gradient_checkpointing_disable(self) -> None:
        for layer in self._checkpointable_layers():
            layer.checkpoint_options = None

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(layer.checkpoint_options is not None for layer in self._checkpointable_layers())

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """transformers 5's name for ``gradient_checkpointing_enable``, the one ``transformers.Trainer`` calls."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)

    activation_checkpointing_disable = gradient_checkpointing_disable
    is_activation_checkpointing = is_gradient_checkpointing

    def _checkpointable_layers(self) -> list[CheckpointableLayer]:
        return [module for module in self.modules() if isinstance(module, CheckpointableLayer)]

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
        return {
            self.key_map.to_reference(k): v.to_dense() if v.is_mkldnn else v
            for k, v in self.state_dict().items()
            if k not in tied
        }

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike | ModelFiles,
        *,
        config: BaseConfig | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: torch.device | str | int | None = None,
        device_map: str | torch.device | int | dict[str, Any] | None = None,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        quantize: str | None = None,
        pack_weights: bool = False,
        load_in_8bit: bool = False,
        load_in_4bit: bool = False,
        **model_kwargs: Any,
    ) -> M:
        """Load a model from a local directory, a Hub id or opened ``ModelFiles`` (``blipkit.hub``).

        The model is built on the meta device and the checkpoint's tensors are assigned to it one by one, so
        no random initialisation is paid and peak memory stays near the size of the weights. ``dtype``
        (default float32; "auto" takes the checkpoint's) applies to floating-point weights. A checkpoint with
        missing, unexpected or mis-shaped keys raises ``CheckpointError`` unless ``strict=False``, which
        initialises missing weights as the reference would and ignores the rest. ``quantize="int8"`` stores the
        linear layers' weights as int8 (see ``blipkit.modeling.quantize``), quantised as each is read.
        ``pack_weights=True`` keeps a bf16 decoder's linear weights in oneDNN's packed form where bf16 is native
        (faster decode steps, slower load; BLIPKIT_PACKED_WEIGHTS=1 or 0 overrides it: see ``linear.packs_weights``).

        The reference's names work too: ``torch_dtype`` for ``dtype``; ``device_map`` ("auto", a device or
        ``{"": device}``, see ``blipkit.devices.device_from_map``) for ``device``, which an int N reads as cuda:N;
        ``load_in_8bit=True`` for ``quantize="int8"`` (weight-only, not bitsandbytes' LLM.int8(): see the README).
        """
        dtype = _alias("dtype", dtype, "torch_dtype", torch_dtype)
        device = _placement(device, device_map)
        quantize = _quantize_method(quantize, load_in_8bit, load_in_4bit)
        files = ModelFiles.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        if config is None:
            config = cls.config_class.from_pretrained(files)
        dtype = _resolve_dtype(dtype, config)
        with torch.device("meta"):
            model = cls(config, **model_kwargs)
            if quantize is not None:
                quantize_linears(model, quantize)
        # The decoder's linear weights are packed as they are read, straight from the mapped files.
        # A quantised or packed model must not keep the files mapped through its other tensors: the pages of the
        # weights it has read would stay resident beside their int8 or packed copies.
        packs = model.decoder_part is not None and quantize is None and packs_weights(dtype, device, pack_weights)
        packing = packable_weights(model, model.decoder_part) if packs else set()
        copy = quantize is not None or bool(packing)
        missing, unexpected, mis_shaped = model._load_tensors(files.weights(), dtype, device, copy, packing)
        if strict and (missing or unexpected or mis_shaped):
            raise CheckpointError(model._mismatch_message(files.name, missing, unexpected, mis_shaped))
        model._materialise_missing(dtype, device)
        return model.eval()

    def train(self: M, mode: bool = True) -> M:
        """As ``nn.Module.train``; training needs dense weights, so packed ones (see ``pack_linears``) are unpacked."""
        if mode:
            unpack_linears(self)
        return super().train(mode)

    def _load_tensors(
        self, files: list[Path], dtype: torch.dtype, device: torch.device, copy: bool, packing: set[str]
    ) -> tuple[list[str], list[str], list[str]]:
        """Give the model the files' tensors one at a time, each through ``load_weight``; return the (missing,
        unexpected, mis-shaped) reference keys. ``copy`` copies tensors out of the mapped files instead of viewing them;
        the weights named in ``packing`` are packed instead (see ``linear.packed``).
        """
        expected = dict(self.state_dict(keep_vars=True))
        tied = self.tied_reference_keys()
        seen: set[str] = set()
        unexpected, mis_shaped = [], []
        for path in files:
            for ref_key, tensor in iter_tensors(path):
                if ref_key in tied:
                    continue
                key = self.key_map.to_ours(ref_key)
                slot = expected.get(key)
                if slot is None:
                    unexpected.append(ref_key)
                    continue
                seen.add(key)  # a mis-shaped key is reported as such, not also as missing
                if slot.shape != tensor.shape:
                    mis_shaped.append(f"{ref_key} (checkpoint {tuple(tensor.shape)}, model {tuple(slot.shape)})")
                elif key in packing:
                    self._load_weight(key, packed(_as_loaded(tensor, slot, dtype, device, copy=False)))
                else:
                    self._load_weight(key, _as_loaded(tensor, slot, dtype, device, copy))
        for module, _target, source, full in self._optional_ties():
            if full not in seen:
                self._load_weight(full, module.get_parameter(source))
                seen.add(full)
        missing = [self.key_map.to_reference(k) for k in expected if k not in seen]
        return missing, unexpected, mis_shaped

    def _load_weight(self, key: str, tensor: torch.Tensor) -> None:
        owner_name, _, attribute = key.rpartition(".")
        load_weight(self.get_submodule(owner_name), attribute, tensor)

    def _mismatch_message(
        self, source: str | os.PathLike, missing: list[str], unexpected: list[str], mis_shaped: list[str]
    ) -> str:
        name = type(self).__name__
        other = _other_model_class(self.config, name)
        if other is not None:
            # A checkpoint of another head: listing its keys (and suggesting strict=False, which would run the
            # wrong head on random weights) hides what is wrong - the task.
            from blipkit.tasks import task_hint

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
        """Give the weights the checkpoint lacked the reference's initialisation, through ``load_weight`` as if read."""
        for module in self.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_meta:
                    # In the load dtype even where the layer stores another (int8): it converts what it is given.
                    value = torch.empty(param.shape, dtype=dtype, device=device)
                    self._init_weight(module, name, value)
                    load_weight(module, name, value)

    def _init_weight(self, module: nn.Module, name: str, value: torch.Tensor) -> None:
        """As the reference initialises: biases zero, norms' scales one, the rest normal(0, initializer_range), an
        embedding's padding row zero."""
        if name == "bias":
            nn.init.zeros_(value)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(value)
        else:
            nn.init.normal_(value, std=getattr(self.config, "initializer_range", 0.02))
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                nn.init.zeros_(value[module.padding_idx])

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


def load_weight(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Give ``module`` its parameter or buffer ``name``: through the module's own ``load_weight`` where it has one (a
    layer that stores weights in a form of its own, such as int8, converts them as they arrive), else by assignment.
    """
    own_loader = getattr(module, "load_weight", None)
    if own_loader is not None:
        own_loader(name, tensor)
    elif isinstance(tensor, nn.Parameter) or name not in module._parameters:
        setattr(module, name, tensor)  # a tied weight stays the very Parameter it is tied to
    else:
        setattr(module, name, nn.Parameter(tensor, requires_grad=module._parameters[name].requires_grad))


def _as_loaded(
    tensor: torch.Tensor, slot: torch.Tensor, dtype: torch.dtype, device: torch.device, copy: bool
) -> torch.Tensor:
    """``tensor`` as the model holds it: on ``device``, floats in ``dtype``, copied out of the file if ``copy``. A
    float tensor whose slot is not a float (an int8 weight) goes on as read: its layer converts it from those values.
    """
    if tensor.is_floating_point() and not slot.is_floating_point():
        return tensor.to(device)
    converted = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
    return converted.clone() if copy and converted is tensor else converted


def _alias(name: str, value: Any, alias: str, alias_value: Any) -> Any:
    """``value``, or what the caller gave under the reference's name ``alias`` for it; both given is an error."""
    if alias_value is None:
        return value
    if value is not None:
        raise ValueError(
            f"got both {name}={value!r} and {alias}={alias_value!r}: give one ({alias} is {name}'s other name)"
        )
    return alias_value


def _placement(
    device: torch.device | str | int | None, device_map: str | torch.device | int | dict[str, Any] | None
) -> torch.device:
    """The one device the model goes on: ``device`` or the reference's ``device_map`` for it; the cpu by default."""
    if device_map is None:
        return check_device(device) or torch.device("cpu")
    return device_from_map(_alias("device", device, "device_map", device_map))


def _quantize_method(quantize: str | None, load_in_8bit: bool, load_in_4bit: bool) -> str | None:
    """``quantize``, or "int8" for the reference's ``load_in_8bit=True``; 4-bit is not a blipkit method."""
    if load_in_4bit:
        raise ValueError(
            f"load_in_4bit=True is not supported: blipkit quantises weights to {', '.join(QUANTIZE_METHODS)} only "
            "(load_in_8bit=True or quantize='int8')"
        )
    if load_in_8bit and quantize is not None:
        raise ValueError(
            f"got both quantize={quantize!r} and load_in_8bit=True: give one (load_in_8bit=True is quantize='int8')"
        )
    return "int8" if load_in_8bit else quantize


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
