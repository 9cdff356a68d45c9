"""Which libraries load: the Keras classes generate without torch, and ``import blipkit`` loads no Keras, TensorFlow
or JAX (each checked in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=os.environ, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_the_keras_classes_caption_without_torch(pair, inputs, checkpoints):
    code = f"""
import json, sys
import numpy as np
from blipkit.tf import TFBlipForConditionalGeneration

model = TFBlipForConditionalGeneration.from_pretrained({str(checkpoints["caption"])!r})
pixels = np.asarray({inputs["pixel_values"].tolist()!r}, dtype=np.float32)
ids = np.asarray(model.generate(pixels, num_beams=2, max_new_tokens=6)).tolist()
print(json.dumps({{"torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch"), "ids": ids}}))
"""
    result = json.loads(run_python(code))
    assert result["torch"] == []
    _, model = pair("caption")
    np.testing.assert_array_equal(result["ids"], model.generate(inputs["pixel_values"], num_beams=2, max_new_tokens=6))


def test_import_blipkit_loads_no_keras():
    code = """
import sys
import blipkit
import blipkit.tf
print(sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "tensorflow", "jax")))
"""
    assert run_python(code) == "[]"
