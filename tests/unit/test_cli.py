"""The blipkit command, run as a user runs it: the installed entry point, default models from a pre-filled cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders.configs import SAME_WIDTH
from tests.conftest import IMAGES
from tests.hubcache import prefill
from tests.reference import save_reference

ROOT = Path(__file__).resolve().parents[2]
BLIPKIT = Path(sys.executable).parent / "blipkit"


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    """Tiny models cached under the ids the CLI uses by default."""
    home = tmp_path_factory.mktemp("hf_home")
    for repo, class_name, overrides in (
        ("Salesforce/blip-image-captioning-base", "BlipForConditionalGeneration", {}),
        ("Salesforce/blip-vqa-base", "BlipForQuestionAnswering", SAME_WIDTH),
        ("Salesforce/blip-itm-base-coco", "BlipForImageTextRetrieval", {}),
    ):
        source = tmp_path_factory.mktemp(class_name)
        save_reference(class_name, source, **overrides)
        prefill(home / "hub", repo, source)
    return home


def run(hf_home: Path, *args: str) -> subprocess.CompletedProcess:
    assert BLIPKIT.exists(), "the blipkit entry point is not installed (pip install -e .)"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("BLIPKIT_DEBUG", None)
    return subprocess.run([str(BLIPKIT), *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_caption_one_image(hf_home):
    result = run(hf_home, "caption", str(IMAGES[0]), "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.strip()


def test_caption_many_images_json_with_progress(hf_home, tmp_path):
    images = [shutil.copy(p, tmp_path / f"{i}_{p.name}") for i, p in enumerate(IMAGES)]
    result = run(hf_home, "caption", *map(str, images), "--json", "--beams", "2", "--batch-size", "3",
                 "--prompt", "a picture of", "--max-new-tokens", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == list(map(str, images))
    assert all(r["caption"].startswith("a picture of") for r in records)
    assert "captioning" in result.stderr and "4/4" in result.stderr  # progress bar past a few images


def test_ask_and_match(hf_home):
    result = run(hf_home, "ask", str(IMAGES[0]), "how many cats?", "--json")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == {"image", "question", "answer"}
    result = run(hf_home, "match", str(IMAGES[0]), "a cat", "a rocket launch")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [r[2] for r in rows] == ["a cat", "a rocket launch"]
    assert all(0 <= float(r[0]) <= 1 and -1 <= float(r[1]) <= 1 for r in rows)


def test_info(hf_home):
    result = run(hf_home, "info", "Salesforce/blip-image-captioning-base", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model_type"] == "blip" and info["architectures"] == ["BlipForConditionalGeneration"]
    assert info["parts"]["vision"]["image_size"] == 32 and info["dtypes"] == ["float32"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(info["files"])
    import blipkit

    model = blipkit.BlipForConditionalGeneration.from_pretrained(
        "Salesforce/blip-image-captioning-base", cache_dir=hf_home / "hub", local_files_only=True
    )
    assert info["parameters"] == model.num_parameters()
    text = run(hf_home, "info", "Salesforce/blip-image-captioning-base")
    assert text.returncode == 0 and "parameters:" in text.stdout and "model.safetensors" in text.stdout


@pytest.mark.parametrize("args", [["--help"], ["caption", "--help"], ["ask", "--help"], ["match", "--help"]])
def test_help_everywhere(hf_home, args):
    result = run(hf_home, *args)
    assert result.returncode == 0 and "usage: blipkit" in result.stdout


@pytest.mark.parametrize(
    "args", [[], ["caption"], ["ask", "x.jpg"], ["caption", "x.jpg", "--beams", "0"], ["frobnicate"]], ids=str
)
def test_usage_errors_exit_2(hf_home, args):
    result = run(hf_home, *args)
    assert result.returncode == 2 and "usage: blipkit" in result.stderr


def test_failures_exit_1_with_one_line(hf_home, tmp_path):
    missing = run(hf_home, "caption", str(tmp_path / "nope.jpg"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"blipkit: error: image file not found: {tmp_path / 'nope.jpg'}"
    uncached = run(hf_home, "caption", str(IMAGES[0]), "--model", "someone/not-cached")
    assert uncached.returncode == 1 and len(uncached.stderr.strip().splitlines()) == 1
    assert "not in the Hugging Face cache" in uncached.stderr and "HF_HUB_OFFLINE=1 is set" in uncached.stderr
    assert "Traceback" not in uncached.stderr


def test_caption_quantized_and_an_unknown_quantization(hf_home):
    result = run(hf_home, "caption", str(IMAGES[0]), "--quantize", "int8", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.strip()
    result = run(hf_home, "caption", str(IMAGES[0]), "--quantize", "int4")
    assert result.returncode == 2 and "argument --quantize: invalid choice: 'int4'" in result.stderr
