"""``blipkit finetune``: checkpoints the reference loads, resume equal to an uninterrupted run, two DDP processes equal
to one with the doubled batch, bad rows skipped, BLIP-2 training only its Q-Former side, and every task running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import blipkit
from blipkit.train.trainer import FinetuneOptions, finetune
from tests.builders.checkpoints import save_tiny_blip2s
from tests.conftest import IMAGES
from tests.reference import save_reference

ROOT = Path(__file__).resolve().parents[2]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune-models")
    dirs = {}
    for name, class_name in (("caption", "BlipForConditionalGeneration"), ("itm", "BlipForImageTextRetrieval")):
        save_reference(class_name, root / name, text_config={**_tiny_text(), **NO_DROPOUT})
        dirs[name] = root / name
    save_reference("BlipForQuestionAnswering", root / "vqa", text_config={**_tiny_text(), **NO_DROPOUT},
                   vision_config={**_tiny_vision(), "hidden_size": 32})  # fmt: skip
    dirs["vqa"] = root / "vqa"
    dirs.update({f"blip2-{k}": v for k, v in save_tiny_blip2s(root / "blip2", opt_padding_side="right").items()})
    return dirs


def _tiny_text() -> dict:
    from tests.reference import TINY_BLIP

    return dict(TINY_BLIP["text_config"])


def _tiny_vision() -> dict:
    from tests.reference import TINY_BLIP

    return dict(TINY_BLIP["vision_config"])


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """A JSONL of the four photographs, twice each with a different caption, question and answers."""
    root = tmp_path_factory.mktemp("finetune-data")
    rows = []
    for number, path in enumerate(IMAGES * 2):
        rows.append({"id": f"row{number}", "path": str(path), "caption": f"a photo number {number % 5} of a thing",
                     "question": "what is it?", "answers": ["a thing", "a thing", "an object"]})  # fmt: skip
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def options(model: Path, train: Path, out: Path, **overrides) -> FinetuneOptions:
    settings = {"task": "caption", "model": str(model), "train": [str(train)], "out": str(out), "epochs": 2,
                "lr": 1e-3, "batch_size": 2, "progress": False}  # fmt: skip
    return FinetuneOptions(**{**settings, **overrides})


def test_the_output_is_a_checkpoint_transformers_and_blipkit_load_with_equal_logits(checkpoints, table, tmp_path):
    import transformers

    result = finetune(options(checkpoints["caption"], table, tmp_path / "run"))
    assert result.steps == 8  # 8 examples, 2 per step, 2 epochs
    final = tmp_path / "run" / "final"
    assert max_difference(weights(final), weights(checkpoints["caption"])) > 1e-3  # it trained
    reference = transformers.BlipForConditionalGeneration.from_pretrained(final).eval()
    ours = blipkit.BlipForConditionalGeneration.from_pretrained(final).eval()
    inputs = blipkit.BlipProcessor.from_pretrained(final)(images=str(IMAGES[0]), text="a photo of", return_tensors="pt")
    with torch.no_grad():
        expected = reference(**inputs).logits
        got = ours(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert {"loss", "lr", "samples_per_s", "epoch"} <= lines[0].keys()
    assert (tmp_path / "run" / "checkpoint-4" / "trainer_state.pt").is_file()  # each epoch's end
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_gives_the_uninterrupted_run(checkpoints, table, tmp_path):
    settings = {"epochs": 3, "save_every": 2, "grad_accum": 2, "batch_size": 1}
    whole = finetune(options(checkpoints["caption"], table, tmp_path / "whole", **settings))
    finetune(options(checkpoints["caption"], table, tmp_path / "cut", max_steps=5, **settings))  # stops after 5
    assert (tmp_path / "cut" / "checkpoint-4").is_dir() and not (tmp_path / "cut" / "checkpoint-6").exists()
    resumed = finetune(options(checkpoints["caption"], table, tmp_path / "cut", resume=True, **settings))
    assert resumed.steps == whole.steps == 12
    assert max_difference(weights(tmp_path / "cut" / "final"), weights(tmp_path / "whole" / "final")) == 0
    assert [r["loss"] for r in resumed.metrics] == [r["loss"] for r in whole.metrics]


def test_resume_refuses_other_settings(checkpoints, table, tmp_path):
    finetune(options(checkpoints["caption"], table, tmp_path / "run", max_steps=4, save_every=2))
    with pytest.raises(ValueError, match="--resume with --batch-size 4, but .* was trained with 2"):
        finetune(options(checkpoints["caption"], table, tmp_path / "run", resume=True, batch_size=4))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint-STEP folder under"):
        finetune(options(checkpoints["caption"], table, tmp_path / "empty", resume=True))


def test_two_ddp_processes_equal_one_with_the_doubled_batch(checkpoints, table, tmp_path):
    common = ["--model", str(checkpoints["caption"]), "--train", str(table), "--epochs", "2", "--lr", "1e-5",
              "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "blipkit", "finetune", "caption", *common, "--batch-size", "4"]
    subprocess.run([*one, "--out", str(tmp_path / "one")], check=True, env=env, cwd=ROOT)
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "blipkit",
           "finetune", "caption", *common, "--batch-size", "2"]  # fmt: skip
    subprocess.run([*two, "--out", str(tmp_path / "two")], check=True, env=env, cwd=ROOT)
    one, two = weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    # An attention key bias has no gradient (softmax ignores a shift shared by every key): what it gets is rounding
    # noise, summed in another order by two processes, which AdamW scales up to a step of up to lr (1e-5) each.
    shift_free = {k for k in one if k.endswith("key.bias")}
    assert (
        max_difference({k: one[k] for k in one.keys() - shift_free}, {k: two[k] for k in two.keys() - shift_free})
        < 1e-6
    )
    assert max_difference({k: one[k] for k in shift_free}, {k: two[k] for k in shift_free}) < 4 * 1e-5
    assert max_difference(one, weights(checkpoints["caption"])) > 2e-5  # 4 steps moved the weights


def test_bad_rows_are_reported_and_skipped(checkpoints, tmp_path, capfd):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(IMAGES[0].read_bytes()[:300])
    rows = [{"path": str(IMAGES[0]), "caption": "a cat"}, {"path": str(broken), "caption": "a dog"},
            {"path": str(IMAGES[1]), "caption": ""}, {"path": str(IMAGES[2]), "caption": "a rocket"}]  # fmt: skip
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    result = finetune(options(checkpoints["caption"], data, tmp_path / "run", epochs=1))
    assert result.skipped == 3
    err = capfd.readouterr().err
    assert "broken.jpg" in err and "cannot read its image" in err
    assert result.steps == 2  # three rows read (one with a broken image), 2 a step


@pytest.mark.parametrize("task, model", [("vqa", "vqa"), ("retrieval", "itm")])
def test_vqa_and_retrieval_train(checkpoints, table, tmp_path, task, model):
    result = finetune(options(checkpoints[model], table, tmp_path / "run", task=task, val=[str(table)], epochs=1))
    assert result.steps == 4
    assert max_difference(weights(tmp_path / "run" / "final"), weights(checkpoints[model])) > 1e-4
    (val,) = [r["val"] for r in result.metrics if "val" in r]
    expected = {"vqa": {"VQA accuracy", "exact match"}, "retrieval": {"txt_r1", "img_r1", "r_mean"}}[task]
    assert expected <= val.keys()


def test_retrieval_with_momentum_distillation_and_a_queue(checkpoints, table, tmp_path):
    result = finetune(options(checkpoints["itm"], table, tmp_path / "run", task="retrieval", epochs=1, momentum=0.9,
                              queue_size=8))  # fmt: skip
    assert result.steps == 4 and all(r["itc"] > 0 and r["itm"] > 0 for r in result.metrics if "loss" in r)


@pytest.mark.parametrize("language_model", ["opt", "t5"])
def test_blip2_trains_the_qformer_side_only(checkpoints, table, tmp_path, language_model):
    source = checkpoints[f"blip2-{language_model}"]
    finetune(options(source, table, tmp_path / "run", epochs=1))
    before, after = weights(source), weights(tmp_path / "run" / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("qformer.", "query_tokens", "language_projection.")) for k in changed)


def test_blip2_lora_changes_only_the_language_models_adapted_projections(checkpoints, table, tmp_path):
    source = checkpoints["blip2-opt"]
    finetune(options(source, table, tmp_path / "run", epochs=1, lora_rank=2))
    before, after = weights(source), weights(tmp_path / "run" / "final")
    changed_lm = {k for k in before if k.startswith("language_model.") and not torch.equal(before[k], after[k])}
    assert changed_lm and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed_lm)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_model."))
