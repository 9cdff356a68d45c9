"""The image encoders of BLIP and BLIP-2: a pre-norm ViT with a class token and learned position embeddings."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from blipkit.checkpoint import KeyMap
from blipkit.configs import Blip2VisionConfig, BlipVisionConfig
from blipkit.modeling.base import PreTrainedModel
from blipkit.modeling.layers import MLP, Attention, CheckpointableLayer, Workspace, builds_graph, residual
from blipkit.modeling.linear import computes_low_precision_slowly
from blipkit.modeling.outputs import BaseModelOutputWithPooling

VISION_KEYS = [
    ("encoder.layers.{}.self_attn.projection", "layers.{}.self_attn.o"),
    ("encoder.layers.{}.layer_norm1", "layers.{}.self_attn_norm"),
    ("encoder.layers.{}.layer_norm2", "layers.{}.mlp_norm"),
    ("encoder.layers", "layers"),
    ("post_layernorm", "final_norm"),
]


def _pair(x: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class VisionEmbeddings(nn.Module):
    def __init__(self, config: BlipVisionConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.patch_size = _pair(config.patch_size)
        grid = [s // p for s, p in zip(_pair(config.image_size), self.patch_size, strict=True)]
        self.grid = tuple(grid)
        self.class_embedding = nn.Parameter(torch.empty(1, 1, dim))
        self.patch_embedding = nn.Conv2d(3, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.position_embedding = nn.Parameter(torch.empty(1, grid[0] * grid[1] + 1, dim))

    def positions(self, height: int, width: int, interpolate: bool) -> torch.Tensor:
        """Position embeddings for an image of this size; bicubically resized when ``interpolate``."""
        new_grid = (height // self.patch_size[0], width // self.patch_size[1])
        if not interpolate or (new_grid == self.grid and height == width):
            return self.position_embedding
        cls_pos, patch_pos = self.position_embedding[:, :1], self.position_embedding[:, 1:]
        dim = patch_pos.shape[-1]
        side = int(patch_pos.shape[1] ** 0.5)
        patch_pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=new_grid, mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)

    def embed_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patch convolution; in float32 where the weight's low precision is slow: PyTorch's CPU convolution
        without bf16 instructions falls back to a generic kernel (BLIP-2's patch embedding took 0.36 s in bf16)."""
        conv = self.patch_embedding
        if not computes_low_precision_slowly(conv.weight):
            return conv(pixels)
        bias = conv.bias.float() if conv.bias is not None else None
        return F.conv2d(pixels.float(), conv.weight.float(), bias, stride=conv.stride).to(pixels.dtype)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        batch, _, height, width = pixel_values.shape
        dtype = self.patch_embedding.weight.dtype
        patches = self.embed_patches(pixel_values.to(dtype)).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        x = torch.cat([self.class_embedding.expand(batch, 1, -1).to(dtype), patches], dim=1)
        positions = self.positions(height, width, interpolate_pos_encoding)
        if x.shape[1] > positions.shape[1]:
            raise ValueError(
                f"pixel_values of size {(height, width)} give {x.shape[1] - 1} patches but the model has positions "
                f"for {positions.shape[1] - 1}; resize the image or pass interpolate_pos_encoding=True"
            )
        return x + positions[:, : x.shape[1]].to(dtype)


class VisionLayer(CheckpointableLayer):
    def __init__(self, config: BlipVisionConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.self_attn_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        # BLIP-2's EVA ViT may drop the qkv bias (qkv_bias=False); BLIP always has one.
        self.self_attn = Attention(
            dim,
            config.num_attention_heads,
            fused_qkv=True,
            dropout=config.attention_dropout,
            qkv_bias=getattr(config, "qkv_bias", True),
        )
        self.mlp_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = MLP(dim, config.intermediate_size, config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = residual(self.self_attn(self.self_attn_norm(x)), x)
        return residual(self.mlp(self.mlp_norm(x)), x)


class BlipVisionModel(PreTrainedModel):
    """ViT encoder. ``last_hidden_state`` is post-normed; ``pooler_output`` is the class token normed once more,
    as the reference does."""

    config_class = BlipVisionConfig
    key_map = KeyMap(VISION_KEYS)
    main_input_name = "pixel_values"

    def __init__(self, config: BlipVisionConfig) -> None:
        super().__init__(config)
        self.embeddings = VisionEmbeddings(config)
        self.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPooling:
        check_pixel_values(pixel_values, self.embeddings.patch_size)
        x = self.embeddings(pixel_values, interpolate_pos_encoding)
        hidden_states = [x] if output_hidden_states else None
        with Workspace.reused() if not builds_graph(self, x) else nullcontext():
            for layer in self.layers:
                x = layer(x)
                if hidden_states is not None:
                    hidden_states.append(x)
        last = self.final_norm(x)
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=self.final_norm(last[:, 0]),
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
        )


class Blip2VisionModel(BlipVisionModel):
    """BLIP-2's image encoder: the same ViT, read from a ``Blip2VisionConfig`` (its defaults are EVA ViT-g)."""

    config_class = Blip2VisionConfig


def check_pixel_values(pixel_values: torch.Tensor | None, patch_size: tuple[int, int]) -> None:
    if pixel_values is None:
        raise ValueError("You have to specify pixel_values")
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"pixel_values must have shape (batch, 3, height, width), got {tuple(pixel_values.shape)}")
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values is empty: got a batch of 0 images")
    if pixel_values.shape[-2] < patch_size[0] or pixel_values.shape[-1] < patch_size[1]:
        raise ValueError(
            f"pixel_values of size {tuple(pixel_values.shape[-2:])} are smaller than one patch {patch_size}"
        )
    # One pass over the pixels, cheap beside the ViT; NaNs would otherwise flow through every layer and come out
    # as captions of nothing but [PAD].
    if not bool(torch.isfinite(pixel_values).all()):
        bad = int((~torch.isfinite(pixel_values)).sum())
        raise ValueError(
            f"pixel_values has NaN or infinite values ({bad} of {pixel_values.numel()}): check the image preprocessing"
        )
