"""The Keras classes on JAX: the tests marked ``backends`` (forward parity, compiled generation) pass again in a fresh
interpreter with KERAS_BACKEND=jax, started beside the TensorFlow tests (tests/tf/background.py)."""

from __future__ import annotations

import re

import keras
import pytest

from tests.tf.background import RUN


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="started from the TensorFlow run only")
def test_parity_holds_on_jax(request):
    pytest.importorskip("jax", reason="JAX is not installed: the Keras classes' JAX backend goes unchecked")
    status, output = request.config.stash[RUN].wait()  # started when collection ended (tests/tf/conftest.py)
    assert status == 0, output[-8000:]
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and not re.search("failed|skipped|error|xfail|xpass", summary), summary
