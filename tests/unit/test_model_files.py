"""``ModelFiles``: one object says where a model's files come from; each file is looked up once, errors as before."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
import torch

import blipkit
from blipkit import hub
from blipkit.hub import ModelFiles, ModelNotFoundError
from tests.hubcache import prefill
from tests.reference import save_reference


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("caption")
    save_reference("BlipForConditionalGeneration", directory)
    return directory


@pytest.fixture
def lookups(monkeypatch):
    """How many times each file name was looked up (locally or on the Hub)."""
    counts: Counter[str] = Counter()
    resolve = hub.resolve_file

    def counting(name_or_path, filename, **kwargs):
        counts[filename] += 1
        return resolve(name_or_path, filename, **kwargs)

    monkeypatch.setattr(hub, "resolve_file", counting)
    return counts


def test_model_and_processor_opened_once_look_each_file_up_once(saved, lookups):
    files = ModelFiles.open(saved)
    model = blipkit.BlipForConditionalGeneration.from_pretrained(files)
    processor = blipkit.BlipProcessor.from_pretrained(files, use_fast=True)
    blipkit.BlipConfig.from_pretrained(files)
    assert isinstance(model, blipkit.BlipForConditionalGeneration) and processor.tokenizer.bos_token == "[DEC]"
    assert lookups["config.json"] == 1 and lookups["model.safetensors"] == 1
    assert max(lookups.values()) == 1


def test_a_pipeline_looks_each_file_up_once(saved, lookups):
    """The task registry reads the family, then loads model and processor, all from one ModelFiles."""
    captioner = blipkit.pipeline("image-to-text", model=str(saved))
    assert isinstance(captioner.model, blipkit.BlipForConditionalGeneration)
    assert lookups["config.json"] == 1 and max(lookups.values()) == 1


def test_opened_files_are_handed_on_as_they_are(saved):
    files = ModelFiles.open(saved, revision="main")
    assert ModelFiles.open(files) is files
    assert ModelFiles.open(files, revision="main", local_files_only=False) is files  # the same settings again
    with pytest.raises(ValueError, match=r"\{'revision': 'v2'\} differ from what ModelFiles\(.*revision='main'\)"):
        blipkit.BlipConfig.from_pretrained(files, revision="v2")


def test_a_file_found_missing_when_optional_says_why_when_required(saved, lookups):
    files = ModelFiles.open(saved)
    assert files.get("absent.json", required=False) is None
    assert files.get("absent.json", required=False) is None and lookups["absent.json"] == 1
    with pytest.raises(ModelNotFoundError, match="has no absent.json$"):
        files.get("absent.json")


def test_weights_single_shards_and_bin(saved, tmp_path):
    assert ModelFiles.open(saved).weights() == [saved / "model.safetensors"]
    model = blipkit.BlipForConditionalGeneration.from_pretrained(saved)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    shards = ModelFiles.open(tmp_path / "sharded").weights()
    assert len(shards) > 1 and all(p.name.startswith("model-000") for p in shards)
    (tmp_path / "bin").mkdir()
    shutil.copy(saved / "config.json", tmp_path / "bin")
    torch.save(model.reference_state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert ModelFiles.open(tmp_path / "bin").weights() == [tmp_path / "bin" / "pytorch_model.bin"]
    with pytest.raises(ModelNotFoundError, match="has no weights: expected model.safetensors"):
        ModelFiles.open(tmp_path / "sharded" / "..").weights()


def test_hub_repository_through_the_cache(saved, tmp_path, lookups):
    snapshot = prefill(tmp_path / "hub", "tiny-org/blip-caption", saved)
    files = ModelFiles.open("tiny-org/blip-caption", cache_dir=tmp_path / "hub", local_files_only=True)
    assert files.name == "tiny-org/blip-caption"
    assert files.get("config.json").resolve() == (snapshot / "config.json").resolve()
    assert files.get("absent.json", required=False) is None  # the repository is cached; the file is not in it
    model = blipkit.BlipForConditionalGeneration.from_pretrained(files)
    assert model.config.vision_config.image_size == 32 and lookups["config.json"] == 1
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        ModelFiles.open("tiny-org/absent", cache_dir=tmp_path / "hub", local_files_only=True).get("config.json")


def test_a_mistyped_directory_is_named_as_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "caption").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match=r"^no model directory at models/captoin \(did you mean"):
        ModelFiles.open("models/captoin").get("config.json")
