"""Loading by Hub id through a pre-filled cache, offline, in a fresh process (as a user would)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.hubcache import prefill
from tests.reference import save_reference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    source = tmp_path_factory.mktemp("model")
    save_reference("BlipForConditionalGeneration", source)
    prefill(home / "hub", "tiny-org/blip-caption", source)
    return home


def run_offline(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


def test_model_and_processor_load_by_id_offline(hf_home):
    result = run_offline(
        hf_home,
        """
        import torch, blipkit
        model = blipkit.BlipForConditionalGeneration.from_pretrained("tiny-org/blip-caption")
        processor = blipkit.BlipProcessor.from_pretrained("tiny-org/blip-caption")
        revision = blipkit.BlipConfig.from_pretrained("tiny-org/blip-caption", revision="main")
        inputs = processor(images=torch.zeros(3, 40, 40, dtype=torch.uint8), text="a photo of")
        print(tuple(model(**inputs).logits.shape), revision.vision_config.image_size)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(1,", "5,", "30524)", "32"]


def test_uncached_model_offline_says_how_to_fix(hf_home):
    result = run_offline(
        hf_home,
        """
        import blipkit
        blipkit.BlipForConditionalGeneration.from_pretrained("Salesforce/blip-image-captioning-base")
        """,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert (
        "ModelNotFoundError: Salesforce/blip-image-captioning-base/config.json is not in the Hugging Face cache" in last
    )
    assert "HF_HUB_OFFLINE=1 is set" in last and "hf download Salesforce/blip-image-captioning-base" in last


def test_cache_dir_and_local_files_only(hf_home, tmp_path):
    import blipkit

    model = blipkit.BlipForConditionalGeneration.from_pretrained(
        "tiny-org/blip-caption", cache_dir=hf_home / "hub", local_files_only=True
    )
    assert model.config.vision_config.image_size == 32
    with pytest.raises(blipkit.ModelNotFoundError, match="not in the Hugging Face cache"):
        blipkit.BlipForConditionalGeneration.from_pretrained(
            "tiny-org/absent", cache_dir=tmp_path, local_files_only=True
        )
