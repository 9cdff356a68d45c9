"""LoRA: trainable low-rank updates beside frozen linear layers, folded back into them to save a plain checkpoint.

``add_lora`` swaps each matching ``nn.Linear`` for a ``LoRALinear`` that keeps the same (now frozen) weight and bias and
adds two small matrices: ``y = x W^T + b + scale * (x A^T) B^T``, A of shape (rank, in), B (out, rank), scale
alpha / rank (Hu et al., 2021). B starts at zero, so the model computes exactly what it did until A and B train.
``merge_lora`` adds ``scale * B @ A`` to each weight and puts plain linear layers back, so that ``save_pretrained``
writes the reference's keys and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

from blipkit.modeling.linear import Linear, linear

# Every attention's query and value projections (self- and cross-attention), as PEFT's defaults for OPT and T5.
ATTENTION_QUERY_VALUE = ("*_attn.q", "*_attn.v")


class LoRALinear(Linear):
    """A linear layer plus a trainable low-rank update: ``linear(x) + scale * lora_B(lora_A(dropout(x)))``.

    It holds the wrapped layer's own weight and bias, frozen, under their own names (their state-dict keys do not
    change). A and B are kept in float32 at least, whatever the weight's dtype, as PEFT keeps them: in bfloat16 an
    update of lr * grad to them would mostly round away.
    """

    def __init__(self, layer: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        # nn.Linear's constructor would allocate and initialise a weight only to drop it: this layer takes layer's.
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        layer.requires_grad_(False)  # its weight and bias stay as they are: only A and B train
        self.weight = layer.weight
        self.register_parameter("bias", layer.bias)  # None too, registered as nn.Linear registers it
        self.plain_class = type(layer)  # what merging gives back
        self.scale = alpha / rank
        dtype, device = torch.promote_types(layer.weight.dtype, torch.float32), layer.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight, and PEFT its A
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """As ``Linear``: with ``out``, the sum is written there (generation's buffers)."""
        product = linear(x, self.weight, self.bias, out=out)
        update = F.linear(F.linear(self.lora_dropout(x).to(self.lora_A.dtype), self.lora_A), self.lora_B) * self.scale
        return product + update.to(product.dtype) if out is None else product.add_(update)

    def merged(self) -> nn.Linear:
        """A plain linear layer of the wrapped layer's class, its weight ``W + scale * B @ A`` (a new tensor: the
        wrapped weight, which may be shared or mapped from a file, is not written)."""
        delta = self.lora_B.detach() @ self.lora_A.detach() * self.scale
        plain = self.plain_class.__new__(self.plain_class)
        nn.Module.__init__(plain)
        plain.in_features, plain.out_features = self.in_features, self.out_features
        weight = (self.weight.to(delta.dtype) + delta).to(self.weight.dtype)
        plain.weight = nn.Parameter(weight, requires_grad=False)
        plain.register_parameter("bias", self.bias)
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.shape[0]}, scale={self.scale:g}"


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] | None = None,
) -> list[str]:
    """Give every ``nn.Linear`` of ``model`` whose name matches one of ``targets`` a LoRA update of rank ``rank``,
    freezing its weight and bias; return the names of the layers wrapped.

    ``targets`` are shell-style patterns (``fnmatch``: ``*`` spans dots) over module names as ``named_modules``
    gives them, e.g. ``"text_decoder.bert.layers.*.self_attn.q"``. By default: the query and value projections of
    every attention of the language model (``model.language_model`` when there is one, else ``model`` itself).
    ``alpha`` sets the update's scale, alpha / rank (default: alpha = rank, a scale of 1); ``dropout`` applies to the
    update's input only. Other parameters are left as they are: freezing the rest is the caller's choice.
    """
    if rank < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"the LoRA dropout must be in [0, 1), got {dropout}")
    if targets is None:
        scope = "language_model." if isinstance(getattr(model, "language_model", None), nn.Module) else ""
        targets = [scope + pattern for pattern in ATTENTION_QUERY_VALUE]
    elif isinstance(targets, str):
        targets = [targets]
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    chosen = [name for name in linears if any(fnmatchcase(name, pattern) for pattern in targets)]
    if not chosen:
        raise ValueError(
            f"no linear layer of {type(model).__name__} matches {list(targets)}; its linear layers are named like "
            f"{', '.join(list(linears)[:3])}"
        )
    for name in chosen:
        if isinstance(linears[name], LoRALinear):
            raise ValueError(f"{name} already has a LoRA update: merge_lora(model) first to add another")
        _replace(model, name, LoRALinear(linears[name], rank, float(rank if alpha is None else alpha), dropout))
    return chosen


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update of ``model`` into its layer's weight and put the plain layer back: the model then
    computes what it did, with the reference's modules and state-dict keys (ready for ``save_pretrained``). As PEFT's
    ``merge_and_unload``, the merged weights stay frozen."""
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if not wrapped:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to merge (add_lora adds them)")
    for name, module in wrapped:
        _replace(model, name, module.merged())


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    owner, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(owner), attribute, module)
