"""BLIP's ViT image encoder in Keras: patch embedding as one matrix product, pre-norm layers, a final norm."""

from __future__ import annotations

import numpy as np
from keras import ops

from blipkit.configs import BlipVisionConfig
from blipkit.modeling.outputs import BaseModelOutputWithPooling
from blipkit.tf.layers import Dense, LayerNorm, Part, activation, attend, merge_heads, split_heads


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def bicubic_matrix(old: int, new: int) -> np.ndarray:
    """(new, old) weights of torch's bicubic resize along one axis (A = -0.75, align_corners=False, edges clamped),
    so position embeddings interpolate as the reference interpolates them, on any backend."""

    def cubic(t: np.ndarray) -> np.ndarray:
        a, t = -0.75, np.abs(t)
        return np.where(
            t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0)
        )

    matrix = np.zeros((new, old), dtype=np.float64)
    for i in range(new):
        source = (i + 0.5) * old / new - 0.5
        base = int(np.floor(source))
        for offset in range(-1, 3):
            matrix[i, min(max(base + offset, 0), old - 1)] += cubic(source - (base + offset))
    return matrix.astype(np.float32)


class VisionEmbeddings(Part):
    def __init__(self, config: BlipVisionConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        dim = config.hidden_size
        self.patch = _pair(config.patch_size)
        self.grid = tuple(s // p for s, p in zip(_pair(config.image_size), self.patch, strict=True))
        self.class_embedding = self.param("class_embedding", (1, 1, dim))
        # The patch convolution (stride = kernel) is a product of each patch's pixels with the flattened kernel.
        self.conv_weight = self.param("patch_embedding.weight", (dim, 3, *self.patch))
        self.conv_bias = self.param("patch_embedding.bias", (dim,))
        self.position_embedding = self.param("position_embedding", (1, self.grid[0] * self.grid[1] + 1, dim))

    def positions(self, height: int, width: int, interpolate: bool):
        grid = (height // self.patch[0], width // self.patch[1])
        if not interpolate or (grid == self.grid and height == width):
            return self.position_embedding
        side = int(round((self.position_embedding.shape[1] - 1) ** 0.5))
        dim = self.position_embedding.shape[-1]
        patches = ops.reshape(self.position_embedding[:, 1:], (side, side, dim))
        rows, cols = bicubic_matrix(side, grid[0]), bicubic_matrix(side, grid[1])
        resized = ops.einsum("ip,jq,pqd->ijd", rows, cols, patches)
        return ops.concatenate([self.position_embedding[:, :1], ops.reshape(resized, (1, -1, dim))], axis=1)

    def call(self, pixel_values, interpolate_pos_encoding: bool = False):
        batch, _, height, width = pixel_values.shape
        (ph, pw), (gh, gw) = self.patch, (height // self.patch[0], width // self.patch[1])
        pixels = pixel_values[:, :, : gh * ph, : gw * pw]
        pixels = ops.reshape(pixels, (-1, 3, gh, ph, gw, pw))
        pixels = ops.reshape(ops.transpose(pixels, (0, 2, 4, 1, 3, 5)), (-1, gh * gw, 3 * ph * pw))
        kernel = ops.transpose(ops.reshape(self.conv_weight, (self.conv_weight.shape[0], -1)))
        patches = ops.matmul(pixels, kernel) + self.conv_bias
        cls = ops.broadcast_to(self.class_embedding, (ops.shape(patches)[0], 1, patches.shape[-1]))
        x = ops.concatenate([cls, patches], axis=1)
        positions = self.positions(height, width, interpolate_pos_encoding)
        if x.shape[1] > positions.shape[1]:
            raise ValueError(
                f"pixel_values of size {(height, width)} give {x.shape[1] - 1} patches but the model has positions "
                f"for {positions.shape[1] - 1}; resize the image or pass interpolate_pos_encoding=True"
            )
        return x + positions[:, : x.shape[1]]


class VisionAttention(Part):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.heads = heads
        self.qkv = self.part("qkv", Dense(dim, 3 * dim, bias=qkv_bias))
        self.projection = self.part("projection", Dense(dim, dim))

    def call(self, x):
        q, k, v = ops.split(self.qkv(x), 3, axis=-1)
        out = attend(split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads))
        return self.projection(merge_heads(out))


class MLP(Part):
    def __init__(self, dim: int, hidden: int, act: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fc1 = self.part("fc1", Dense(dim, hidden))
        self.fc2 = self.part("fc2", Dense(hidden, dim))
        self.act = activation(act)

    def call(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(Part):
    def __init__(self, config: BlipVisionConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = self.part(
            "self_attn", VisionAttention(dim, config.num_attention_heads, getattr(config, "qkv_bias", True))
        )
        self.layer_norm1 = self.part("layer_norm1", LayerNorm(dim, eps))
        self.mlp = self.part("mlp", MLP(dim, config.intermediate_size, config.hidden_act))
        self.layer_norm2 = self.part("layer_norm2", LayerNorm(dim, eps))

    def call(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(Part):
    """The ViT without its class's loading machinery: what the BLIP models hold as ``vision_model``."""

    def __init__(self, config: BlipVisionConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = self.part("embeddings", VisionEmbeddings(config))
        self.encoder_layers = [
            self.part(f"encoder.layers.{i}", VisionLayer(config)) for i in range(config.num_hidden_layers)
        ]
        self.post_layernorm = self.part("post_layernorm", LayerNorm(config.hidden_size, config.layer_norm_eps))

    def call(self, pixel_values, interpolate_pos_encoding: bool = False, output_hidden_states: bool = False):
        check_pixel_values(pixel_values, self.embeddings.patch)
        x = self.embeddings(ops.cast(pixel_values, self.compute_dtype), interpolate_pos_encoding)
        hidden_states = [x] if output_hidden_states else None
        for layer in self.encoder_layers:
            x = layer(x)
            if hidden_states is not None:
                hidden_states.append(x)
        last = self.post_layernorm(x)
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=self.post_layernorm(last[:, 0]),  # the class token normed once more, as the reference
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )


def check_pixel_values(pixel_values, patch: tuple[int, int]) -> None:
    """Shape checks on (batch, 3, height, width); values are checked where they are concrete (``to_tensor``)."""
    shape = tuple(pixel_values.shape)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"pixel_values must have shape (batch, 3, height, width), got {shape}")
    if shape[0] == 0:
        raise ValueError("pixel_values is empty: got a batch of 0 images")
    if shape[2] < patch[0] or shape[3] < patch[1]:
        raise ValueError(f"pixel_values of size {shape[2:]} are smaller than one patch {patch}")
