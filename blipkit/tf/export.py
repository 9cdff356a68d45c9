"""A generating model as a TensorFlow SavedModel: one ``serve`` signature from inputs to generated ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras


def export_generation(
    model: keras.Model,
    filepath,
    body: Callable[..., Any],
    inputs: dict[str, Any],
    complete: Callable[[dict[str, Any]], dict[str, Any]],
    verbose: bool | None,
) -> None:
    """Write ``body`` (inputs -> (ids buffer, length)) as the ``serve`` endpoint taking ``inputs`` (TensorSpecs by
    name) and returning the ids trimmed to the generated length; ``complete`` adds what the signature leaves out
    (a caption's default prompt). The model's variables are tracked, so the SavedModel holds the weights."""
    if keras.backend.backend() != "tensorflow":
        raise NotImplementedError(
            f"export writes a TensorFlow SavedModel: run with KERAS_BACKEND=tensorflow (now {keras.backend.backend()})"
        )
    import tensorflow as tf

    names = list(inputs)

    def serve(*tensors):
        ids, length = body(**complete(dict(zip(names, tensors, strict=True))))
        return ids[:, :length]

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", tf.function(serve, autograph=False), input_signature=[inputs[name] for name in names])
    archive.write_out(str(filepath), verbose=bool(verbose))
