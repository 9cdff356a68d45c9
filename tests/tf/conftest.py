"""Fixtures for the Keras classes: the TensorFlow backend unless KERAS_BACKEND names another, tiny checkpoints of
every class built once per session, the models loaded once, and their inputs; and the hooks that run the JAX run of
the parity tests (tests/tf/background.py) beside the others."""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest

# Keras reads its backend once, at its first import: set it before anything imports Keras.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

keras = pytest.importorskip("keras", reason="the Keras classes need the tf extra: pip install 'blipkit[tf]'")
pytest.importorskip(keras.backend.backend(), reason=f"Keras's backend {keras.backend.backend()} is not installed")

from tests.tf.background import RUN, TEST, JaxRun  # noqa: E402
from tests.tf.cases import CLASSES, sample_inputs, save_checkpoints  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "backends: run again with KERAS_BACKEND=jax by test_backends.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.name == TEST)  # last: it waits for the JAX run, which runs beside the rest


def pytest_collection_finish(session):
    wanted = any(item.name == TEST for item in session.items) and not session.config.option.collectonly
    if wanted and keras.backend.backend() == "tensorflow" and importlib.util.find_spec("jax") is not None:
        session.config.stash[RUN] = JaxRun()


def pytest_sessionfinish(session):
    run = session.config.stash.get(RUN, None)
    if run is not None:
        run.stop()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    return save_checkpoints(tmp_path_factory.mktemp("tf-checkpoints"))


@pytest.fixture(scope="session")
def pair(checkpoints):
    """``pair(name)``: blipkit's torch model and the Keras model of checkpoint ``name``, each loaded once."""
    import blipkit
    import blipkit.tf

    @functools.cache
    def load(name: str):
        directory = checkpoints[name]
        return (
            getattr(blipkit, CLASSES[name]).from_pretrained(directory),
            getattr(blipkit.tf, f"TF{CLASSES[name]}").from_pretrained(directory),
        )

    return load


@pytest.fixture(scope="session")
def processor(checkpoints):
    import blipkit

    return blipkit.BlipProcessor.from_pretrained(checkpoints["caption"])


@pytest.fixture(scope="session")
def session_inputs(processor):
    return sample_inputs(processor)


@pytest.fixture
def inputs(session_inputs):
    """The sample inputs (``cases.sample_inputs``), copied for each test: a test may write into its arrays."""
    return {name: array.copy() for name, array in session_inputs.items()}
