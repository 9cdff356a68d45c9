"""BLIP's TensorFlow classes, written once on Keras 3: they run on the TensorFlow backend (``KERAS_BACKEND``'s default)
and on JAX. Importing ``blipkit`` never imports Keras; importing a name from here does (extra ``tf``)."""

from __future__ import annotations

from typing import Any

from blipkit._lazy import lazy_exports

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
_exported, __all__ = lazy_exports("blipkit.tf", _EXPORTS, globals())


def __getattr__(name: str) -> Any:
    try:
        return _exported(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("keras", "tensorflow"):
            raise ImportError(f"blipkit.tf.{name} needs Keras 3 and TensorFlow: pip install 'blipkit[tf]'") from e
        raise
