"""The base of every Keras BLIP class: load and save the Hugging Face layout, convert inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import keras
import numpy as np
from keras import ops

from blipkit.checkpoint_files import CheckpointError
from blipkit.configs import BaseConfig
from blipkit.hub import ModelFiles
from blipkit.tf.checkpoint import load_variables, mismatch_message, save_variables
from blipkit.tf.layers import Keyed

M = TypeVar("M", bound="TFPreTrainedModel")


class TFPreTrainedModel(Keyed, keras.Model):
    """A Keras model whose variables carry the reference's checkpoint keys.

    ``from_pretrained`` reads the same config.json and safetensors files as the torch classes (a directory or a
    Hub id, through the same cache); ``save_pretrained`` writes them back in torch's layout, so transformers and
    blipkit's torch classes load what these save. Computation is float32.
    """

    config_class: ClassVar[type[BaseConfig]]
    reference_name: ClassVar[str]  # the torch class of the same checkpoints, written as config.json's architecture

    def __init__(self, config: BaseConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_keys()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def tied_keys(self) -> set[str]:
        """Keys the reference writes as aliases of other weights, skipped on load and never saved."""
        return set()

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike | ModelFiles,
        *,
        config: BaseConfig | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        **model_kwargs: Any,
    ) -> M:
        """Load from a model directory or Hub id. A checkpoint with missing, unexpected or mis-shaped keys raises
        ``CheckpointError`` naming them; one of another head names the class that reads it."""
        files = ModelFiles.open(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        if config is None:
            config = cls.config_class.from_pretrained(files)
        architecture = (config.extra.get("architectures") or [None])[0]

        def refuse(mismatch: tuple) -> CheckpointError:
            message = mismatch_message(cls.__name__, str(files.name), architecture, cls.reference_name, mismatch)
            return CheckpointError(message)

        try:
            model = cls(config, **model_kwargs)
        except ValueError as e:  # another head's config may not build this one (VQA needs equal widths)
            if architecture and architecture != cls.reference_name:
                raise refuse(([], [], [])) from e
            raise
        mismatch = load_variables(list(model.checkpoint_variables()), files.weights(), model.tied_keys())
        if any(mismatch):
            raise refuse(mismatch)
        return model

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """config.json (naming the torch class, so AutoModel picks it) and model.safetensors in torch's layout."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.extra["architectures"] = [self.reference_name]
        self.config.save_pretrained(directory)
        save_variables(list(self.checkpoint_variables()), directory)


def to_tensor(value: Any, dtype: str, name: str):
    """A numpy array, list, torch-free tensor of any backend, as a tensor of ``dtype``; non-finite pixels refused
    where the values are concrete (inside a compiled function they are not)."""
    if value is None:
        return None
    if hasattr(value, "numpy") and type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    tensor = ops.convert_to_tensor(value)
    if dtype.startswith("float"):
        tensor = ops.cast(tensor, dtype)
        if _is_concrete(tensor) and not bool(np.all(np.isfinite(ops.convert_to_numpy(tensor)))):
            raise ValueError(f"{name} has NaN or infinite values: check the image preprocessing")
    elif "int" in str(tensor.dtype) or "bool" in str(tensor.dtype):
        tensor = ops.cast(tensor, dtype)
    else:
        raise TypeError(f"{name} must hold integers, got {tensor.dtype}")
    return tensor


def _is_concrete(tensor) -> bool:
    try:
        ops.convert_to_numpy(tensor[..., :0])
    except Exception:  # a symbolic tensor (tf.function, jax.jit) has no values to check
        return False
    return True
