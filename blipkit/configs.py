"""Model configurations as dataclasses that read and write the reference's config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from blipkit.hub import ModelFiles, read_json

C = TypeVar("C", bound="BaseConfig")

CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A config.json that cannot describe a model."""


@dataclass
class BaseConfig:
    """Shared behaviour: dict round trips that keep unknown keys, config.json I/O, Hub resolution.

    Keys this class does not know (``architectures``, ``dtype``, ``transformers_version``, ...) live in
    ``extra`` and are written back unchanged, so a round trip through blipkit loses nothing.
    """

    model_type: ClassVar[str] = ""
    # Where a composite config.json keeps this config (e.g. "vision_config" inside a BlipConfig).
    base_config_key: ClassVar[str | None] = None
    sub_configs: ClassVar[dict[str, type[BaseConfig]]] = {}

    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._check_types()

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            expected = _FIELD_TYPES.get(f.type) if isinstance(f.type, str) else None
            if expected is None:  # extra, sub-configs
                continue
            value = getattr(self, f.name)
            if value is None and "None" in f.type:
                continue
            # bool is an int to Python, but a flag in an int field is a mistake.
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be {f.type}, got {value!r}")

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], **overrides: Any) -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a dict, got {type(data).__name__}")
        data = {**data, **overrides}
        found = data.get("model_type")
        if found and cls.model_type and found != cls.model_type:
            if cls.base_config_key and isinstance(data.get(cls.base_config_key), dict):
                # A composite config given to a part's class: take the part, as the reference does.
                return cls.from_dict(data[cls.base_config_key])
            raise ConfigError(f"{cls.__name__} needs model_type {cls.model_type!r}, config.json has {found!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "model_type"}
        for key, sub_cls in cls.sub_configs.items():
            value = known.get(key)
            if value is None:
                known[key] = sub_cls()
            elif isinstance(value, dict):
                known[key] = sub_cls.from_dict(value)
            elif not isinstance(value, sub_cls):
                raise ConfigError(f"{cls.__name__}.{key} must be a dict or {sub_cls.__name__}, got {value!r}")
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, BaseConfig) else value
        out.update(self.extra)
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_NAME).write_text(self.to_json_string())

    @classmethod
    def from_json_file(cls: type[C], path: str | os.PathLike) -> C:
        return cls.from_dict(read_json(Path(path), ConfigError))

    @classmethod
    def from_pretrained(cls: type[C], name_or_path: str | os.PathLike | ModelFiles, **hub_kwargs: Any) -> C:
        """Read config.json from a local directory, a Hub repository id or opened ``ModelFiles``."""
        return cls.from_json_file(ModelFiles.open(name_or_path, **hub_kwargs).get(CONFIG_NAME))


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "bool | None": (bool,),
    "int | None": (int,),
    "int | list[int] | None": (int, list),
    "int | list[int] | tuple[int, int]": (int, list, tuple),
}


@dataclass
class BlipVisionConfig(BaseConfig):
    """The ViT image encoder of BLIP (defaults: ViT-B/16 at 384 px)."""

    model_type: ClassVar[str] = "blip_vision_model"
    base_config_key: ClassVar[str | None] = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int | list[int] | tuple[int, int] = 384
    patch_size: int | list[int] | tuple[int, int] = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    initializer_range: float = 1e-10


@dataclass
class BlipTextConfig(BaseConfig):
    """The BERT text encoder/decoder of BLIP, with cross-attention to the image."""

    model_type: ClassVar[str] = "blip_text_model"
    base_config_key: ClassVar[str | None] = "text_config"

    vocab_size: int = 30524
    hidden_size: int = 768
    encoder_hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = 30522
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    sep_token_id: int | None = 102
    is_decoder: bool = True
    use_cache: bool = True
    tie_word_embeddings: bool = True
    label_smoothing: float = 0.0


@dataclass
class BlipConfig(BaseConfig):
    """A whole BLIP model: vision and text configs plus the joint heads' sizes."""

    model_type: ClassVar[str] = "blip"
    sub_configs: ClassVar[dict[str, type[BaseConfig]]] = {
        "text_config": BlipTextConfig,
        "vision_config": BlipVisionConfig,
    }

    text_config: BlipTextConfig = field(default_factory=BlipTextConfig)
    vision_config: BlipVisionConfig = field(default_factory=BlipVisionConfig)
    projection_dim: int = 512
    logit_scale_init_value: float = 2.6592
    image_text_hidden_size: int = 256
    label_smoothing: float = 0.0
    tie_word_embeddings: bool = True
    initializer_factor: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for key, sub_cls in self.sub_configs.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, sub_cls.from_dict(value))
        super().__post_init__()
        # The text decoder cross-attends to the image tokens, so their widths must agree.
        self.text_config.encoder_hidden_size = self.vision_config.hidden_size

    @classmethod
    def from_text_vision_configs(
        cls,
        text_config: BlipTextConfig | dict[str, Any],
        vision_config: BlipVisionConfig | dict[str, Any],
        **kwargs: Any,
    ) -> BlipConfig:
        """A BLIP config from its parts (copied: the parts given are left as they are) and other fields."""
        return cls.from_dict({"text_config": _copy(text_config), "vision_config": _copy(vision_config)}, **kwargs)


@dataclass
class Blip2VisionConfig(BaseConfig):
    """The EVA ViT-g image encoder of BLIP-2 (defaults: 39 layers, 1408 wide, 224 px, patch 14)."""

    model_type: ClassVar[str] = "blip_2_vision_model"
    base_config_key: ClassVar[str | None] = "vision_config"

    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int | list[int] | tuple[int, int] = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    initializer_range: float = 1e-10
    qkv_bias: bool = True


@dataclass
class Blip2QFormerConfig(BaseConfig):
    """The Q-Former: a BERT whose learned query tokens cross-attend to the image every few layers."""

    model_type: ClassVar[str] = "blip_2_qformer"
    base_config_key: ClassVar[str | None] = "qformer_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408
    use_qformer_text_input: bool = False


@dataclass
class OPTConfig(BaseConfig):
    """Meta's OPT decoder, BLIP-2's decoder-only language model (defaults: OPT-125m)."""

    model_type: ClassVar[str] = "opt"
    base_config_key: ClassVar[str | None] = "text_config"

    vocab_size: int = 50272
    hidden_size: int = 768
    num_hidden_layers: int = 12
    ffn_dim: int = 3072
    max_position_embeddings: int = 2048
    do_layer_norm_before: bool = True
    _remove_final_layer_norm: bool = False
    word_embed_proj_dim: int | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.0
    num_attention_heads: int = 12
    activation_function: str = "relu"
    layerdrop: float = 0.0
    init_std: float = 0.02
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 2
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.word_embed_proj_dim is None:
            self.word_embed_proj_dim = self.hidden_size


@dataclass
class T5Config(BaseConfig):
    """Google's T5 encoder-decoder, BLIP-2's other language model (defaults: t5-small; Flan-T5 sets
    ``feed_forward_proj="gated-gelu"``)."""

    model_type: ClassVar[str] = "t5"
    base_config_key: ClassVar[str | None] = "text_config"

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    is_encoder_decoder: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    decoder_start_token_id: int | None = None
    classifier_dropout: float = 0.0
    tie_word_embeddings: bool = True
    # Original T5 scales the decoder output by d_model ** -0.5 before the LM head; T5 v1.1 / Flan-T5 do not.
    # Checkpoints from before this key existed say so with tie_word_embeddings=false.
    scale_decoder_outputs: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        gated, _, act = self.feed_forward_proj.rpartition("-")
        if gated not in ("", "gated") or not act:
            raise ConfigError(
                f"T5Config.feed_forward_proj must be 'ACT' or 'gated-ACT' (e.g. 'relu', 'gated-gelu'), "
                f"got {self.feed_forward_proj!r}"
            )

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        # "gated-gelu" has always meant the tanh approximation.
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def hidden_size(self) -> int:
        return self.d_model


# The language models BLIP-2 can drive, by the model_type in its text_config.
TEXT_CONFIGS: dict[str, type[BaseConfig]] = {"opt": OPTConfig, "t5": T5Config}


@dataclass
class Blip2Config(BaseConfig):
    """A whole BLIP-2 model: image encoder, Q-Former, and a language model chosen by ``text_config.model_type``."""

    model_type: ClassVar[str] = "blip-2"
    sub_configs: ClassVar[dict[str, type[BaseConfig]]] = {
        "vision_config": Blip2VisionConfig,
        "qformer_config": Blip2QFormerConfig,
    }

    vision_config: Blip2VisionConfig = field(default_factory=Blip2VisionConfig)
    qformer_config: Blip2QFormerConfig = field(default_factory=Blip2QFormerConfig)
    text_config: BaseConfig = field(default_factory=OPTConfig)
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256
    image_token_index: int | None = None
    initializer_factor: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for key, sub_cls in self.sub_configs.items():
            if isinstance(getattr(self, key), dict):
                setattr(self, key, sub_cls.from_dict(getattr(self, key)))
        if isinstance(self.text_config, dict):
            kind = self.text_config.get("model_type", "opt")
            if kind not in TEXT_CONFIGS:
                raise ConfigError(
                    f"Blip2Config: unsupported language model {kind!r}; supported: {', '.join(TEXT_CONFIGS)}"
                )
            self.text_config = TEXT_CONFIGS[kind].from_dict(self.text_config)
        super().__post_init__()
        # The Q-Former's cross-attention reads image tokens, so it takes the image encoder's width.
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size

    @classmethod
    def from_vision_qformer_text_configs(
        cls,
        vision_config: Blip2VisionConfig | dict[str, Any],
        qformer_config: Blip2QFormerConfig | dict[str, Any],
        text_config: BaseConfig | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Blip2Config:
        """A BLIP-2 config from its parts (copied: the parts given are left as they are) and other fields; without
        ``text_config``, the default language model (OPT)."""
        parts = {"vision_config": _copy(vision_config), "qformer_config": _copy(qformer_config)}
        if text_config is not None:
            parts["text_config"] = _copy(text_config)
        return cls.from_dict(parts, **kwargs)

    @property
    def use_decoder_only_language_model(self) -> bool:
        """OPT continues the prompt; T5 encodes it and decodes the answer separately."""
        return not getattr(self.text_config, "is_encoder_decoder", False)


def _copy(part: BaseConfig | dict[str, Any]) -> dict[str, Any]:
    """A part config as a fresh dict: the whole config sets fields of its parts (widths that must agree)."""
    if isinstance(part, BaseConfig):
        return part.to_dict()
    if isinstance(part, dict):
        return dict(part)
    raise ConfigError(f"a part config must be a config or a dict, got {part!r}")
