"""Errors that name the file or value at fault and say what to do (issue 14): the CLI run as a user runs it, and
the Python calls behind it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import blipkit
from blipkit import jobs
from blipkit.devices import available_devices, check_device
from blipkit.hub import ModelNotFoundError, resolve_file
from tests.conftest import IMAGES, VOCAB

BLIPKIT = Path(sys.executable).parent / "blipkit"
IMAGE = str(IMAGES[0])


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The blipkit command, offline, with an empty Hugging Face cache, in ``cwd``."""
    env = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("BLIPKIT_DEBUG", None)
    return subprocess.run([str(BLIPKIT), *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The failure's message: exit code 1 and exactly one line on stderr."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --------------------------------------------------------------------------- collections without --out (item 1)
@pytest.fixture
def collections(tmp_path):
    (tmp_path / "photos").mkdir()
    shutil.copy(IMAGES[0], tmp_path / "photos")
    (tmp_path / "list.txt").write_text(f"{IMAGE}\n")
    (tmp_path / "table.csv").write_text(f"path\n{IMAGE}\n")
    (tmp_path / "shard.tar").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    "args, message",
    [
        (["caption", "photos"], "photos is a folder: give --out FILE to caption every image in it as a batch job"),
        (
            ["caption", IMAGE, "shots/*.png"],
            "shots/*.png is a glob pattern: give --out FILE to caption every image in it as a batch job",
        ),
        (
            ["ask", "list.txt", "what is it?"],
            "list.txt is a list of images: give --out FILE to answer the question for every image in it as a batch job",
        ),
        (
            ["match", "table.csv", "a cat"],
            "table.csv is a table: give --out FILE to score every image in it as a batch job",
        ),
        (
            ["match", "shard.tar", "a cat"],
            "shard.tar is a webdataset shard: give --out FILE to score every image in it as a batch job",
        ),
    ],
    ids=["folder", "glob", "list", "table", "shard"],
)
def test_a_collection_without_out_asks_for_out(models, collections, args, message):
    model = str(models / ("vqa" if args[0] == "ask" else "itm" if args[0] == "match" else "caption"))
    assert one_line_error(run(collections, *args, "--model", model)) == f"blipkit: error: {message}"


# ------------------------------------------------------------------------------- mistyped directories (item 2)
def test_a_mistyped_model_directory_is_not_sent_to_the_hub(tmp_path):
    (tmp_path / "models" / "caption").mkdir(parents=True)
    result = run(tmp_path, "caption", IMAGE, "--model", "models/captoin")
    assert (
        one_line_error(result) == "blipkit: error: no model directory at models/captoin (did you mean models/caption?)"
    )


def test_path_like_names_are_directories(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "blip").mkdir(parents=True)
    (tmp_path / "models" / "blip" / "config.json").write_text("{}")
    assert resolve_file("~/models/blip", "config.json") == tmp_path / "models" / "blip" / "config.json"
    with pytest.raises(ModelNotFoundError, match="^no model directory at models/vqa$"):
        resolve_file("models/vqa", "config.json")
    with pytest.raises(
        ModelNotFoundError, match="^no model directory at ~/models/bilp \\(did you mean .*models/blip\\?\\)"
    ):
        resolve_file("~/models/bilp", "config.json")


# -------------------------------------------------------------------------- a checkpoint of another task (item 3)
def test_a_vqa_checkpoint_for_caption_names_the_task_that_fits(models, tmp_path):
    vqa = models / "vqa"
    assert one_line_error(run(tmp_path, "caption", IMAGE, "--model", str(vqa))) == (
        f"blipkit: error: {vqa} is a BlipForQuestionAnswering checkpoint (visual-question-answering, `blipkit ask`), "
        "which BlipForConditionalGeneration (image-to-text, `blipkit caption`) cannot use: load it with "
        "BlipForQuestionAnswering, or give a BlipForConditionalGeneration checkpoint"
    )


def test_a_retrieval_checkpoint_for_blip_model_names_its_class(models):
    with pytest.raises(
        blipkit.CheckpointError,
        match=r"itm is a BlipForImageTextRetrieval checkpoint \(image-text-matching, `blipkit match`\), which "
        "BlipModel cannot use: load it with BlipForImageTextRetrieval, or give a BlipModel checkpoint$",
    ):
        blipkit.BlipModel.from_pretrained(models / "itm")


@pytest.mark.parametrize("architectures", [None, ["SomeOtherModel"]], ids=["absent", "unknown"])
def test_without_a_known_other_class_the_keys_are_listed(models, tmp_path, architectures):
    shutil.copytree(models / "caption", tmp_path / "caption")
    config = json.loads((tmp_path / "caption" / "config.json").read_text())
    config["architectures"] = architectures
    (tmp_path / "caption" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        blipkit.CheckpointError,
        match=r"^the checkpoint does not fit BlipForImageTextRetrieval: missing keys: .*; unexpected keys: .*"
        "strict=False",
    ):
        blipkit.BlipForImageTextRetrieval.from_pretrained(tmp_path / "caption")


# ------------------------------------------------------------------------------ pipelines' text (item 4)
@pytest.fixture(scope="module")
def pipes(models):
    return {
        task: blipkit.pipeline(task, model=models / name)
        for task, name in (
            ("image-to-text", "caption"),
            ("visual-question-answering", "vqa"),
            ("image-text-matching", "itm"),
            ("zero-shot-image-classification", "itm"),
        )
    }


@pytest.mark.parametrize(
    "task, kwargs, error, message",
    [
        ("visual-question-answering", {"image": IMAGE, "question": 123}, TypeError,
         r"^question must be a string or a list of strings, got 123 \(int\)$"),
        ("visual-question-answering", {"image": [IMAGE, IMAGE], "question": ["what?", None]}, TypeError,
         r"^question must be strings; item 1 is None \(NoneType\)$"),
        ("image-to-text", {"images": IMAGE, "prompt": ["a picture of"]}, TypeError,
         r"^prompt must be a string, got \['a picture of'\] \(list\)$"),
        ("image-text-matching", {"image": IMAGE, "text": 7}, TypeError,
         r"^text must be a string or a list of strings, got 7 \(int\)$"),
        ("image-text-matching", {"image": IMAGE, "text": []}, ValueError, "^text is an empty list"),
        ("zero-shot-image-classification", {"image": IMAGE, "candidate_labels": ["dog", 2]}, TypeError,
         r"^candidate_labels must be strings; item 1 is 2 \(int\)$"),
        ("zero-shot-image-classification", {"image": IMAGE, "candidate_labels": ["dog"], "hypothesis_template": "a"},
         ValueError, "^hypothesis_template must hold {} where each label goes, got 'a'$"),
    ],
    ids=["question-int", "question-item", "prompt", "text", "text-empty", "labels", "template"],
)  # fmt: skip
def test_pipelines_name_text_arguments_of_the_wrong_type(pipes, task, kwargs, error, message):
    with pytest.raises(error, match=message):
        pipes[task](**kwargs)


def test_a_single_label_is_one_label(pipes):
    assert [r["label"] for r in pipes["zero-shot-image-classification"](IMAGE, candidate_labels="dog")] == ["dog"]


# ------------------------------------------------------------------------------------------- devices (item 5)
def test_check_device():
    assert check_device(None) is None
    assert check_device("cpu") == torch.device("cpu") == check_device(torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^unknown device 'gpu0': use cpu, cuda, cuda:N, mps or xpu \(this machine"):
        check_device("gpu0")
    with pytest.raises(ValueError, match=r"^device 'cuda:99' is not available: this machine has cpu"):
        check_device("cuda:99")


def test_an_absent_device_fails_before_anything_is_written(models, collections):
    here = ", ".join(available_devices())
    caption = ("--model", str(models / "caption"))
    result = run(collections, "caption", IMAGE, *caption, "--device", "gpu0")
    assert one_line_error(result) == (
        f"blipkit: error: unknown device 'gpu0': use cpu, cuda, cuda:N, mps or xpu (this machine has {here})"
    )
    result = run(collections, "caption", "photos", *caption, "--out", "captions.jsonl", "--device", "cuda:99")
    assert one_line_error(result) == f"blipkit: error: device 'cuda:99' is not available: this machine has {here}"
    assert not (collections / "captions.jsonl").exists()


# ------------------------------------------------------------------------------ legacy .bin checkpoints (item 6)
def test_a_legacy_pickle_bin_loads(models, tmp_path):
    state = load_file(models / "caption" / "model.safetensors")
    shutil.copy(models / "caption" / "config.json", tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    loaded = blipkit.BlipForConditionalGeneration.from_pretrained(tmp_path)
    expected = blipkit.BlipForConditionalGeneration.from_pretrained(models / "caption")
    for (name, actual), wanted in zip(loaded.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(actual, wanted), name


# ------------------------------------------------------------------------------------- long text (item 7)
LONG_TEXT = "word " * 600  # 602 tokens with [CLS] and [SEP]
TOO_LONG = (
    r"^Token indices sequence length is longer than the specified maximum sequence length for this model "
    r"\(602 > 512\)\. Running this sequence through the model will result in indexing errors: "
    r"pass truncation=True to cut it to 512 tokens$"
)


def test_text_longer_than_the_model_warns_as_the_reference_does(models):
    tokenizer = blipkit.BlipTokenizer.from_vocab(VOCAB)
    with pytest.warns(UserWarning, match=TOO_LONG):
        tokenizer(["a short one", LONG_TEXT])
    processor = blipkit.BlipProcessor.from_pretrained(models / "caption")
    with pytest.warns(UserWarning, match=TOO_LONG):
        processor(text=LONG_TEXT)


@pytest.mark.parametrize("options", [{"truncation": True}, {"max_length": 700}], ids=str)
def test_no_warning_when_the_caller_chose_the_length(options, recwarn):
    blipkit.BlipTokenizer.from_vocab(VOCAB)(LONG_TEXT, **options)
    assert not [w for w in recwarn if "Token indices" in str(w.message)]


# ------------------------------------------------------------------------------------------ dtypes (item 8)
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, "float8_e4m3fn", torch.int8, "int8", "float128"], ids=str)
def test_dtypes_the_models_cannot_compute_in_are_refused_at_load(models, dtype):
    with pytest.raises(
        ValueError,
        match=rf"^dtype {dtype!r} is not one blipkit models compute in: use float32, bfloat16, float16, float64 or "
        "'auto'$",
    ):
        blipkit.BlipForConditionalGeneration.from_pretrained(models / "caption", dtype=dtype)


@pytest.mark.parametrize(
    "option, message",
    [({"dtype": "float8_e4m3fn"}, "dtype 'float8_e4m3fn' is not one blipkit models compute in"),
     ({"quantize": "int4"}, "unknown quantize method 'int4'")],
    ids=str,
)  # fmt: skip
def test_a_job_with_a_bad_dtype_or_quantize_fails_before_creating_its_output(tmp_path, option, message):
    with pytest.raises(ValueError, match=message):
        jobs.caption(IMAGES[:1], tmp_path / "captions.jsonl", model=str(tmp_path / "no-model"), **option)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "dtype, expected",
    [(torch.float64, torch.float64), ("float16", torch.float16), ("torch.bfloat16", torch.bfloat16),
     ("auto", torch.float32)],
    ids=str,
)  # fmt: skip
def test_dtypes_the_models_compute_in_load(models, dtype, expected):
    assert blipkit.BlipForConditionalGeneration.from_pretrained(models / "caption", dtype=dtype).dtype == expected
