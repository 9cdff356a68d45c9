"""The JAX run of the parity tests: a second interpreter with KERAS_BACKEND=jax, started as soon as collection ends
(tests/tf/conftest.py) so that it runs on the second core beside the TensorFlow tests; its test, which pytest runs
last, waits for the result."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST = "test_parity_holds_on_jax"

# The tests marked ``backends``: forward parity in full, and of generation the compiled runs of each search and
# compiled sampling against eager (under JAX an eager generate compiles its loop too, so every eager setting again
# would double the time for little).
COMMAND = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "backends",
           "tests/tf/test_parity.py", "tests/tf/test_generation.py"]  # fmt: skip


class JaxRun:
    """The run, started on creation; its output goes to a file, so a long report never blocks it."""

    def __init__(self) -> None:
        self.output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - open while the run lasts; stop() closes it
        env = {**os.environ, "KERAS_BACKEND": "jax"}
        self.process = subprocess.Popen(
            COMMAND, cwd=ROOT, env=env, stdout=self.output, stderr=subprocess.STDOUT, text=True
        )

    def wait(self) -> tuple[int, str]:
        """The exit status and the whole output."""
        status = self.process.wait()
        self.output.seek(0)
        return status, self.output.read()

    def stop(self) -> None:
        if self.process.poll() is None:  # the session ended first (-x, an interrupt)
            self.process.kill()
            self.process.wait()
        self.output.close()


RUN = pytest.StashKey[JaxRun]()
