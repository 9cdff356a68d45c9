"""Building blocks shared by every model: attention (self and cross, on SDPA), MLP, activations, masks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from blipkit.generation.cache import KVCache
from blipkit.modeling.cpu import best_time, is_forced
from blipkit.modeling.linear import CALIBRATION_MARGIN, Linear, computes_low_precision_slowly, upcasts

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def attention_ready(attention: Attention, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention``'s keys and values over ``context``, for many attention calls (a decoder's view of the image):
    in float32 where the low precision is slow - one query token against hundreds of bfloat16 keys ran 8x slower
    than in float32. They are projected straight into float32, never rounded to bfloat16 on the way. Each is made
    contiguous in its (batch, heads, tokens, head_dim) layout once, rather than copied by every step that reads it."""
    keys, values = attention.project_kv(context, torch.float32 if computes_low_precision_slowly(context) else None)
    return keys.contiguous(), values.contiguous()


class StepDecoder:
    """Base of the one-step-at-a-time decoders generation drives: a KV cache per layer (grown in chunks), reordered
    together for beam search, and - for decoders that cross-attend - the context's keys and values, projected
    once and shared by every row (beam, sample) that decodes from it, never copied."""

    def __init__(
        self,
        layers: nn.ModuleList,
        rows: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device,
        context: torch.Tensor | None = None,
    ) -> None:
        attn = layers[0].self_attn
        self.caches = [KVCache(rows, attn.num_heads, max_length, attn.head_dim, dtype, device) for _ in layers]
        self.context_kv = None
        if context is not None:
            self.context_kv = [attention_ready(layer.cross_attn, context) for layer in layers]

    def prefill(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The prompt's logits at its last position: one step over all its tokens, unless a decoder reads its prompt
        another way."""
        return self.step(input_ids, position_ids, attention_mask)

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(rows, new) ids and positions, (rows, past + new) mask -> (rows, vocab) logits of the last position."""
        raise NotImplementedError

    def reorder(self, rows: torch.Tensor) -> None:
        for cache in self.caches:
            cache.reorder(rows)


class Embedding(nn.Embedding):
    """``nn.Embedding`` that skips its random initialisation on the meta device, where models are built before
    loading: ``normal_`` on a meta tensor imports sympy (70 MB of memory and a second of time, for nothing)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


# The same functions overwriting their input, for outputs no gradient will flow through: a ViT's MLP hidden states
# are its largest tensors (8 images at 384 px: 56 MB each layer), and a fresh one costs a page fault per 4 kB.
def _tanh_gelu_(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x, approximate="tanh")


def _silu_(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=True)


IN_PLACE_ACTIVATIONS = {
    "gelu": torch.ops.aten.gelu_,
    "gelu_new": _tanh_gelu_,
    "gelu_pytorch_tanh": _tanh_gelu_,
    "relu": torch.relu_,
    "silu": _silu_,
    "swish": _silu_,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


class Workspace:
    """Output buffers that every layer of a stack reuses during one pass no gradient flows through.

    PyTorch's CPU allocator takes tensors over glibc's mmap threshold (32 MB) from the kernel afresh each time,
    paying a page fault per 4 kB: a ViT's qkv and MLP hidden states for 8 images at 384 px are 42 and 56 MB a
    layer. Writing them into the same two buffers instead took such a ViT-B pass from ~280k faults and ~0.9 s of
    kernel time to ~80k and ~0.25 s, bit-identical. A buffer's contents live until the next layer writes it:
    whatever keeps an intermediate output (a forward hook) must clone it.

    A model opens one for a pass with ``with Workspace.reused():``; the layers inside ask ``Workspace.current()``
    for it, so nothing is threaded through their arguments. Each thread and task has its own.
    """

    _current: ContextVar[Workspace | None] = ContextVar("blipkit_workspace", default=None)

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    @classmethod
    @contextmanager
    def reused(cls) -> Iterator[Workspace]:
        """A workspace for the layers run inside the ``with`` block."""
        token = cls._current.set(cls())
        try:
            yield cls._current.get()
        finally:
            cls._current.reset(token)

    @classmethod
    def current(cls) -> Workspace | None:
        return cls._current.get()

    def buffer(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The buffer called ``name``, of this shape, ``like``'s device and ``dtype`` (default ``like``'s), made
        anew if they changed."""
        dtype = dtype or like.dtype
        found = self._buffers.get(name)
        if found is None or found.shape != shape or found.dtype != dtype or found.device != like.device:
            found = self._buffers[name] = torch.empty(shape, dtype=dtype, device=like.device)
        return found


def _reused_buffer(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
    """The current workspace's buffer for an output, or None (a fresh tensor) outside one or under autograd."""
    workspace = Workspace.current()
    if workspace is None or like.requires_grad:
        return None
    return workspace.buffer(name, shape, like)


def _product_buffer(module: nn.Module, name: str, x: torch.Tensor, features: int) -> torch.Tensor | None:
    """Where to write a layer's product of ``x`` that the next operation reads (None: a fresh tensor). Where products
    of this many rows of bf16 run in float32 (``linear.upcasts``), in float32: the products skip rounding to bf16,
    and what reads them skips converting them back (a ViT-B MLP's hidden states for 8 images at 384 px took 15 ms a
    layer to convert). Else in ``x``'s dtype, in the current ``Workspace``'s buffer if there is one."""
    shape = (*x.shape[:-1], features)
    if builds_graph(module, x) or x.dtype == torch.float32 or not upcasts(x, x.numel() // max(1, x.shape[-1])):
        return _reused_buffer(name, shape, x)
    workspace = Workspace.current()
    return workspace.buffer(name, shape, x, torch.float32) if workspace else torch.empty(shape, device=x.device)


def builds_graph(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether running ``module`` on ``x`` records anything for backward (so no output may be overwritten)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def residual(update: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + update``, written into ``update`` (a layer's fresh output) when no gradient needs it kept."""
    return x + update if update.requires_grad else update.add_(x)


class CheckpointableLayer(nn.Module):
    """A layer of a transformer stack (ViT, BERT, Q-Former, OPT, T5) that gradient checkpointing can recompute.

    With ``checkpoint_options`` set (``PreTrainedModel.gradient_checkpointing_enable`` sets them), a training pass
    that builds a graph keeps only the layer's inputs for backward and runs the layer again there, through
    ``torch.utils.checkpoint.checkpoint``: the activations of one layer at a time instead of all of them, for about
    one more forward pass. Other passes (eval, ``no_grad``, generation) run the layer as it is.
    """

    checkpoint_options: dict[str, Any] | None = None  # torch.utils.checkpoint.checkpoint's keyword arguments

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.checkpoint_options is None or not (self.training and torch.is_grad_enabled()):
            return super().__call__(*args, **kwargs)
        # Keyword arguments bound first: the reentrant variant, if asked for, passes positional ones only.
        return checkpoint(partial(super().__call__, **kwargs), *args, **self.checkpoint_options)


class Attention(nn.Module):
    """Multi-head attention on ``F.scaled_dot_product_attention``.

    One implementation serves as self-attention (``context=None``) and cross-attention (``context`` given)
    everywhere in blipkit. Keys and values can be projected once with ``project_kv`` and passed back in as
    ``kv`` - that is how cross-attention over an image is computed once per image during generation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kv_dim: int | None = None,
        *,
        qkv_bias: bool = True,
        out_bias: bool = True,
        fused_qkv: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"hidden size {dim} is not a multiple of the number of attention heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads  # T5 sets its own: heads * head_dim need not equal dim
        inner = num_heads * self.head_dim
        self.dropout = dropout
        self.scale = scale  # None: SDPA's 1/sqrt(head_dim)
        if fused_qkv:
            self.qkv = Linear(dim, 3 * inner, bias=qkv_bias)
        else:
            self.q = Linear(dim, inner, bias=qkv_bias)
            self.k = Linear(kv_dim or dim, inner, bias=qkv_bias)
            self.v = Linear(kv_dim or dim, inner, bias=qkv_bias)
        self.o = Linear(inner, dim, bias=out_bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, tokens, dim) -> (batch, heads, tokens, head_dim)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, context: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``context``, split into heads: two (batch, heads, tokens, head_dim), in ``dtype``
        (default: the context's)."""
        shape = (*context.shape[:-1], self.k.out_features)

        def project(layer: Linear) -> torch.Tensor:
            into = None if dtype in (None, context.dtype) else torch.empty(shape, dtype=dtype, device=context.device)
            return self._heads(layer(context, out=into))

        return project(self.k), project(self.v)

    def _fused_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values from the fused projection (into ``_product_buffer``). Where they are float32,
        attention runs in float32: its own products are faster so there too (ViT-B, 8 images at 384 px: 55 against
        75 ms a layer through SDPA on the avx512_bf16 Xeon)."""
        qkv = self.qkv(x, out=_product_buffer(self, "qkv", x, self.qkv.out_features))
        return qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """``mask`` is additive, broadcastable to (batch, heads, queries, keys); see ``additive_mask``. With fewer
        ``kv`` rows than query rows, consecutive groups of query rows share one kv row (the mask must then have
        a query dimension of 1). Inside a ``Workspace``, the fused q|k|v projection goes to its buffer."""
        if hasattr(self, "qkv"):
            q, k, v = self._fused_qkv(x)
        else:
            q = self._heads(self.q(x))
            k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        if q.dtype != k.dtype:  # float32 keys and values from ``attention_ready`` take float32 queries
            q = q.to(k.dtype)
        if mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        heads_last = attend(q, k, v, mask, is_causal=is_causal, scale=self.scale, dropout=dropout).transpose(1, 2)
        if heads_last.dtype == x.dtype or heads_last.requires_grad:
            return self.o(heads_last.flatten(2).to(x.dtype))
        merged_shape = (*heads_last.shape[:2], -1)
        if upcasts(self.o.weight, heads_last.shape[0] * heads_last.shape[1]):  # float32 heads go in as they are
            result = torch.empty((*heads_last.shape[:2], self.o.out_features), dtype=x.dtype, device=x.device)
            return self.o(heads_last.reshape(merged_shape), out=result)
        merged = torch.empty(heads_last.shape, dtype=x.dtype, device=x.device).copy_(heads_last)  # merge and cast
        return self.o(merged.view(merged_shape))


# The most query tokens per key/value row (decode steps, beams folded in) for which attention in bf16/fp16 on CPUs
# with native bf16 may take matmul-softmax-matmul instead of SDPA's CPU kernel. Which is faster is measured
# (``eager_max_queries``): on an AMD EPYC, one query against 577 image keys took 1.7 ms eagerly and 6.9 ms in SDPA;
# on an Intel Xeon of the same class, 1.0 and 0.42 ms.
EAGER_MAX_QUERIES = 16
# The query counts that measurement times, on a decode step's cross-attention over a 384 px image's 577 tokens.
EAGER_CALIBRATION_QUERIES = (1, 4, EAGER_MAX_QUERIES)
CALIBRATION_SHAPE = {"rows": 8, "heads": 8, "keys": 577, "head_dim": 96}
_eager_max_queries: dict[torch.dtype, int] = {}


def eager_max_queries(dtype: torch.dtype) -> int:
    """Up to how many queries per key/value row attention in ``dtype`` (bf16/fp16, on a CPU with native bf16) takes
    ``_eager_attention``: measured once per process (``calibrate_eager_attention``); 0 where SDPA won even at one
    query. A forced CPU class (``cpu.cpu_class``) is not measured: EAGER_MAX_QUERIES."""
    if dtype not in _eager_max_queries:
        _eager_max_queries[dtype] = EAGER_MAX_QUERIES if is_forced() else calibrate_eager_attention(dtype)
    return _eager_max_queries[dtype]


def calibrate_eager_attention(dtype: torch.dtype) -> int:
    """The most of EAGER_CALIBRATION_QUERIES up to which eager attention beat SDPA (by the products' calibration
    margin) at every count timed, or 0."""
    rows, heads, keys, head_dim = CALIBRATION_SHAPE.values()
    generator = torch.Generator().manual_seed(0)
    k, v = (torch.randn(rows, heads, keys, head_dim, generator=generator).to(dtype) for _ in range(2))
    most = 0
    with torch.no_grad():
        for queries in EAGER_CALIBRATION_QUERIES:
            q = torch.randn(rows, heads, queries, head_dim, generator=generator).to(dtype)
            eager = best_time(lambda q=q: _eager_attention(q, k, v, None, False, None))
            sdpa = best_time(lambda q=q: F.scaled_dot_product_attention(q, k, v))
            if eager >= CALIBRATION_MARGIN * sdpa:
                break
            most = queries
    return most


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Attention of (rows, heads, queries, head_dim) ``q`` over (kv_rows, heads, keys, head_dim) ``k`` and ``v``,
    in its fastest form for the shape, dtype and CPU class.

    ``mask`` is additive or boolean, broadcastable to (rows, heads, queries, keys). With fewer key/value rows than
    query rows, consecutive groups of query rows share one key/value row (the mask must then have a query
    dimension of 1): they are folded into the query length, so every group reads one shared copy of the context.
    """
    groups = q.shape[0] // k.shape[0]
    rows, heads, tokens, dim = q.shape
    if groups > 1:
        q = q.view(k.shape[0], groups, heads, tokens, dim).transpose(1, 2).reshape(k.shape[0], heads, -1, dim)
    if dropout == 0.0 and (eager_attention_is_faster(q) or _differentiated_with_additive_mask(q, k, v, mask)):
        out = _eager_attention(q, k, v, mask, is_causal, scale)
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scale
        )
    if groups > 1:
        out = out.view(k.shape[0], heads, groups, tokens, dim).transpose(1, 2).reshape(rows, heads, tokens, dim)
    return out


def _differentiated_with_additive_mask(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> bool:
    """Whether autograd records this attention under an additive mask. SDPA's backward is then wrong for a fully
    masked query row (every score at the dtype's minimum: left padding in a causal BERT): its forward gives the uniform
    average of the values, as the references' eager attention does, but its gradients are not that average's (torch
    2.13, CPU). The eager form's are, and they are the references' (BERT and T5 attend eagerly there)."""
    additive = mask is not None and mask.is_floating_point()
    return additive and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))


def eager_attention_is_faster(q: torch.Tensor) -> bool:
    """Whether attention for these (rows, heads, queries, head_dim) queries takes ``_eager_attention``."""
    low_precision = q.dtype in (torch.bfloat16, torch.float16) and q.device.type == "cpu"
    return low_precision and not computes_low_precision_slowly(q) and q.shape[2] <= eager_max_queries(q.dtype)


def _eager_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """What SDPA computes, as two products and a float32 softmax between them."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:  # top-left aligned, as SDPA's is_causal
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    weights = scores.softmax(-1)
    # A fully masked row attends to nothing, as SDPA's does; in place unless backward needs the softmax's output.
    weights = weights.nan_to_num(0.0) if weights.requires_grad else weights.nan_to_num_(0.0)
    return torch.matmul(weights.to(v.dtype), v)


class MLP(nn.Module):
    """Two linear layers with an activation between them."""

    def __init__(self, dim: int, hidden: int, act: str, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden, bias=bias)
        self.fc2 = Linear(hidden, dim, bias=bias)
        self.act = activation(act)
        self.act_in_place = IN_PLACE_ACTIVATIONS.get(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inside a ``Workspace``, the hidden states go to its buffer; they stay in float32 where this many rows
        multiply in float32 (see ``_product_buffer``)."""
        hidden = self.fc1(x, out=_product_buffer(self, "mlp.hidden", x, self.fc1.out_features))
        in_place = self.act_in_place is not None and not hidden.requires_grad
        hidden = self.act_in_place(hidden) if in_place else self.act(hidden)
        if hidden.dtype == x.dtype:
            return self.fc2(hidden)
        return self.fc2(hidden, out=torch.empty((*x.shape[:-1], self.fc2.out_features), dtype=x.dtype, device=x.device))


def check_text_length(length: int, limit: int) -> None:
    """Refuse text with more tokens than the model has positions (the embedding lookup would fail obscurely)."""
    if length > limit:
        raise ValueError(
            f"text of {length} tokens is longer than the model's max_position_embeddings ({limit}); "
            "truncate it, e.g. processor(..., truncation=True, max_length=...)"
        )


def additive_mask(
    padding_mask: torch.Tensor | None,
    num_queries: int,
    dtype: torch.dtype,
    *,
    causal: bool = False,
    past: int = 0,
) -> torch.Tensor | None:
    """An additive attention mask (batch or 1, 1, queries, keys): 0 where attended, the dtype's minimum elsewhere.

    ``padding_mask`` is (batch, keys) with 1 for real tokens. ``past`` counts cached keys that precede the
    queries (causal masks). The minimum rather than -inf keeps fully masked rows (left padding under a
    causal mask) finite: they attend uniformly, as the reference's eager attention (BLIP's text model) does.
    """
    allowed = boolean_mask(padding_mask, num_queries, causal=causal, past=past)
    if allowed is None:
        return None
    return torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def boolean_mask(
    padding_mask: torch.Tensor | None, num_queries: int, *, causal: bool = False, past: int = 0
) -> torch.Tensor | None:
    """The same mask as booleans (True: attend). Fully masked rows then give zeros, as SDPA-based references do."""
    if padding_mask is None and not causal:
        return None
    num_keys = padding_mask.shape[-1] if padding_mask is not None else past + num_queries
    allowed = torch.ones(1, 1, num_queries, num_keys, dtype=torch.bool, device=_device(padding_mask))
    if causal:
        query_pos = torch.arange(past, past + num_queries, device=allowed.device)[:, None]
        allowed = allowed & (torch.arange(num_keys, device=allowed.device)[None, :] <= query_pos)
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :].bool()
    return allowed


def _device(t: torch.Tensor | None) -> torch.device | None:
    return t.device if t is not None else None


def lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy: logits at t predict labels at t+1; -100 labels are ignored."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(
        shifted, labels[:, 1:].reshape(-1).to(logits.device), reduction=reduction, label_smoothing=label_smoothing
    )
    return loss.view(logits.shape[0], -1).sum(1) if reduction == "none" else loss
