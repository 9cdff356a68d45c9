"""The Keras building blocks: layers whose variables carry the reference's checkpoint keys, and attention.

Every layer here is a ``Part``: it registers each variable and sub-layer under the key fragment the reference's
checkpoints use (``attention.self.query``, ``layer_norm1``), so a model's ``checkpoint_variables()`` lists its
variables by the keys of a transformers checkpoint, with no renaming table. Written with ``keras.ops`` only, so the
same code runs on TensorFlow and JAX.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

# How a checkpoint tensor is laid out relative to the Keras variable holding it.
AS_IS = "as_is"
TRANSPOSED = "transposed"  # torch's Linear keeps (out, in); a Keras kernel is (in, out)


@dataclass(frozen=True)
class CheckpointVariable:
    key: str
    variable: keras.Variable
    layout: str


class Keyed:
    """Variables and sub-layers registered under checkpoint key fragments (mixed into a Keras layer or model)."""

    def _init_keys(self) -> None:
        # Kept outside Keras's attribute tracking: Keras tracks the layers and variables through the attributes
        # they are also assigned to.
        object.__setattr__(self, "_keyed", {})
        # The torch classes' signatures take flags and None positionally; Keras allows it when asked.
        self._allow_non_tensor_positional_args = True
        self.built = True  # every variable is made in the constructor, at the checkpoint's shapes

    def part(self, key: str, layer: Keyed) -> Keyed:
        """Register ``layer`` under ``key`` ("" puts its keys at this level)."""
        self._keyed[key] = layer
        return layer

    def param(self, key: str, shape: tuple[int, ...], layout: str = AS_IS) -> keras.Variable:
        variable = self.add_weight(shape=shape, initializer="zeros", name=key.replace(".", "_"))
        self._keyed[key] = (variable, layout)
        return variable

    def checkpoint_variables(self, prefix: str = "") -> Iterator[CheckpointVariable]:
        """Every variable with its full checkpoint key, in registration order."""
        for key, item in self._keyed.items():
            if isinstance(item, Keyed):
                yield from item.checkpoint_variables(f"{prefix}{key}." if key else prefix)
            else:
                yield CheckpointVariable(f"{prefix}{key}", *item)


class Part(Keyed, keras.layers.Layer):
    """A Keras layer whose variables carry checkpoint keys."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._init_keys()


class Dense(Part):
    """A linear layer read from torch's (out, in) weight: ``x @ kernel + bias``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.kernel = self.param("weight", (in_features, out_features), TRANSPOSED)
        self.bias = self.param("bias", (out_features,)) if bias else None

    def call(self, x):
        y = ops.matmul(x, self.kernel)
        return y + self.bias if self.bias is not None else y


class LayerNorm(Part):
    def __init__(self, dim: int, eps: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.gamma = self.param("weight", (dim,))
        self.beta = self.param("bias", (dim,))

    def call(self, x):
        mean = ops.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        variance = ops.mean(ops.square(centred), axis=-1, keepdims=True)  # biased, as torch's LayerNorm
        return centred * ops.rsqrt(variance + self.eps) * self.gamma + self.beta


class Embedding(Part):
    def __init__(self, rows: int, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = self.param("weight", (rows, dim))

    def call(self, ids):
        return ops.take(self.table, ids, axis=0)


ACTIVATIONS = {
    "gelu": lambda x: ops.gelu(x, approximate=False),
    "gelu_new": lambda x: ops.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: ops.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * ops.sigmoid(1.702 * x),
    "relu": ops.relu,
    "silu": ops.silu,
    "swish": ops.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


def split_heads(x, heads: int):
    """(batch, tokens, heads * dim) -> (batch, heads, tokens, dim)."""
    return ops.transpose(ops.reshape(x, (-1, _length(x), heads, x.shape[-1] // heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(batch, heads, tokens, dim) -> (batch, tokens, heads * dim)."""
    return ops.reshape(ops.transpose(x, (0, 2, 1, 3)), (-1, _length(x, axis=2), x.shape[1] * x.shape[3]))


def _length(x, axis: int = 1):
    """The tokens axis: static where known, so shapes stay inferable in an exported graph with an open batch."""
    return x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis]


def attend(q, k, v, mask=None):
    """Scaled dot-product attention over (batch, heads, tokens, dim); ``mask`` is additive, broadcast to the scores.

    With fewer key/value rows than query rows (a context shared by several rows: beams, samples), the query rows of
    one context are folded into its one key/value row instead of copying the keys and values for each."""
    scale = 1.0 / float(np.sqrt(q.shape[-1]))
    rows, contexts = q.shape[0], k.shape[0]
    folded = rows is not None and contexts is not None and rows != contexts
    if folded:
        per_context = rows // contexts
        heads, tokens, dim = q.shape[1], q.shape[2], q.shape[3]
        q = ops.reshape(ops.transpose(ops.reshape(q, (contexts, per_context, heads, tokens, dim)), (0, 2, 1, 3, 4)),
                        (contexts, heads, per_context * tokens, dim))  # fmt: skip
    scores = ops.matmul(q * scale, ops.swapaxes(k, -1, -2))
    if mask is not None:
        scores = scores + mask
    out = ops.matmul(ops.softmax(scores, axis=-1), v)
    if folded:
        out = ops.reshape(out, (contexts, heads, per_context, tokens, dim))
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3, 4)), (rows, heads, tokens, dim))
    return out


def additive_mask(allowed):
    """0 where ``allowed``, float32's minimum elsewhere: fully masked rows stay finite and attend uniformly, as the
    reference's eager attention does."""
    return ops.where(allowed, 0.0, float(np.finfo(np.float32).min))


def padding_and_causal_mask(padding_mask, num_queries: int, causal: bool):
    """The additive mask (batch or 1, 1, queries, keys) for a (batch, keys) padding mask (1: real token), causal or
    not; None when nothing is masked."""
    if padding_mask is None and not causal:
        return None
    allowed = None
    if padding_mask is not None:
        allowed = ops.cast(padding_mask, "bool")[:, None, None, :]
    if causal:
        keys = num_queries if padding_mask is None else ops.shape(padding_mask)[1]
        lower = ops.arange(keys)[None, :] <= ops.arange(num_queries)[:, None]
        allowed = lower[None, None] if allowed is None else ops.logical_and(allowed, lower[None, None])
    return additive_mask(allowed)
