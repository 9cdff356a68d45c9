"""BLIP's TensorFlow classes, written once on Keras 3: they run on the TensorFlow backend (``KERAS_BACKEND``'s default)
and on JAX. Importing ``blipkit`` never imports Keras; importing a name from here does (extra ``tf``)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "blipkit.tf.models": (
        "TFBlipForConditionalGeneration",
        "TFBlipForImageTextRetrieval",
        "TFBlipForQuestionAnswering",
        "TFBlipModel",
        "TFBlipTextLMHeadModel",
        "TFBlipTextModel",
        "TFBlipVisionModel",
    ),
    "blipkit.tf.base": ("TFPreTrainedModel",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'blipkit.tf' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("keras", "tensorflow"):
            raise ImportError(f"blipkit.tf.{name} needs Keras 3 and TensorFlow: pip install 'blipkit[tf]'") from e
        raise
    globals()[name] = value
    return value
