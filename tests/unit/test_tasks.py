"""The task registry: BLIP-2 checkpoints (OPT, Flan-T5, ITM) through pipeline, CLI, jobs and Ray give the
reference's ids; the registry picks the model class from config.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blipkit
from blipkit import jobs
from blipkit.tasks import TASKS, checkpoint_model_type, task_for_command
from tests.builders.checkpoints import save_tiny_blip2s
from tests.conftest import IMAGES

BLIPKIT = Path(sys.executable).parent / "blipkit"
QUESTIONS = ["how many cats are on the sofa?", "what", "is this a photo of an astronaut?", "color?"]


@pytest.fixture(scope="module")
def blip2_dirs(tmp_path_factory):
    """Tiny BLIP-2s saved with their processors; OPT's tokenizer pads on the right, as blip2-opt's does."""
    return save_tiny_blip2s(tmp_path_factory.mktemp("blip2"), opt_padding_side="right")


def reference_answers(directory: Path, prompts: list[str], **generate_kwargs) -> list[str]:
    """The reference model's generate on the reference processor's inputs (OPT left-padded), new text only."""
    import transformers

    processor = transformers.Blip2Processor.from_pretrained(directory)
    processor.tokenizer.padding_side = "left"
    model = transformers.Blip2ForConditionalGeneration.from_pretrained(directory).eval()
    inputs = processor(images=[str(p) for p in IMAGES[: len(prompts)]], text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, **generate_kwargs)
    if model.config.use_decoder_only_language_model:
        ids = ids[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: the tiny T5 answers one question at a near tie between ending and going
    on, which a reduction split across threads differently in the two implementations can tip (seen in three
    full runs on 2 cores, never alone); one thread fixes every sum's order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_blip2_vqa_and_captions_equal_the_reference_generate(blip2_dirs, lm, one_thread):
    vqa = blipkit.pipeline("vqa", model=blip2_dirs[lm], batch_size=4)
    answers = vqa(image=[str(p) for p in IMAGES], question=QUESTIONS, max_new_tokens=5)
    expected = reference_answers(blip2_dirs[lm], [f"Question: {q} Answer:" for q in QUESTIONS], max_new_tokens=5)
    assert [rows[0]["answer"] for rows in answers] == expected
    one_by_one = [vqa(image=str(p), question=q, max_new_tokens=5)[0] for p, q in zip(IMAGES, QUESTIONS, strict=True)]
    assert [rows[0] for rows in answers] == one_by_one  # left padding: a batch does not change an answer

    captioner = blipkit.pipeline("image-to-text", model=blip2_dirs[lm])
    captions = captioner([str(p) for p in IMAGES[:2]], prompt="a photograph of", num_beams=2, max_new_tokens=4)
    assert [rows[0]["generated_text"] for rows in captions] == reference_answers(
        blip2_dirs[lm], ["a photograph of"] * 2, num_beams=2, max_new_tokens=4
    )


@pytest.mark.parametrize("lm", ["opt", "t5"])
@pytest.mark.parametrize("return_full_text", [True, False])
def test_image_text_to_text_equals_the_reference_pipeline(blip2_dirs, lm, return_full_text):
    import transformers

    reference = transformers.pipeline("image-text-to-text", model=str(blip2_dirs[lm]), dtype=torch.float32)
    ours = blipkit.pipeline("image-text-to-text", model=blip2_dirs[lm])
    text = "Question: what is in the picture? Answer:"
    for image in map(str, IMAGES[:2]):
        expected = reference(images=image, text=text, max_new_tokens=5, return_full_text=return_full_text)
        assert ours(images=image, text=text, max_new_tokens=5, return_full_text=return_full_text) == expected


@torch.no_grad()
def test_blip2_matching_and_embeddings_equal_the_reference_model(blip2_dirs, tmp_path):
    import transformers

    reference = transformers.Blip2ForImageTextRetrieval.from_pretrained(blip2_dirs["itm"]).eval()
    processor = transformers.Blip2Processor.from_pretrained(blip2_dirs["itm"])
    texts = ["a cat lying on a blanket", "a rocket", "a cup of coffee"]
    inputs = processor(images=[str(IMAGES[0])] * 3, text=texts, padding=True, return_tensors="pt")
    match = reference(**inputs, use_image_text_matching_head=True).logits_per_image.softmax(-1)[:, 1]
    cosine = reference(**inputs).logits_per_image[0]
    rows = blipkit.pipeline("image-text-matching", model=blip2_dirs["itm"], batch_size=2)(str(IMAGES[0]), texts)
    assert [r["text"] for r in rows] == texts
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), match, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([r["similarity"] for r in rows]), cosine, atol=1e-5, rtol=1e-4)

    out = tmp_path / "embeddings.jsonl"
    jobs.embed([str(p) for p in IMAGES], out, model=str(blip2_dirs["itm"]), progress=False)
    embeddings = torch.tensor([json.loads(line)["embedding"] for line in out.read_text().splitlines()])
    expected = reference(**processor(images=[str(p) for p in IMAGES], text=["x"] * 4, return_tensors="pt"))
    torch.testing.assert_close(embeddings, expected.image_embeds, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_text_embeddings_equal_the_reference_and_share_the_image_space(blip2_dirs, models):
    import transformers

    from blipkit.tasks import load

    texts = ["a cat lying on a blanket", "a rocket"]
    blip2 = load(TASKS["text-embedding"], blip2_dirs["itm"])
    reference = transformers.Blip2ForImageTextRetrieval.from_pretrained(blip2_dirs["itm"]).eval()
    inputs = transformers.Blip2Processor.from_pretrained(blip2_dirs["itm"])(
        images=[str(IMAGES[0])] * 2, text=texts, padding=True, return_tensors="pt"
    )
    expected = reference(**inputs)
    torch.testing.assert_close(torch.tensor(blip2.run(None, texts)), expected.text_embeds, atol=1e-5, rtol=1e-4)
    # The best query's dot product with the text embedding is the ITC similarity.
    queries = torch.tensor(load(TASKS["image-embedding"], blip2_dirs["itm"]).run(blip2.pixel_values(IMAGES[0]), None))
    similarity = (queries[0] @ torch.tensor(blip2.run(None, texts)).T).max(0).values
    torch.testing.assert_close(similarity, expected.logits_per_image[0], atol=1e-5, rtol=1e-4)

    blip = load(TASKS["text-embedding"], models / "itm")
    reference = transformers.BlipForImageTextRetrieval.from_pretrained(models / "itm").eval()
    tokens = transformers.BlipProcessor.from_pretrained(models / "itm")(text=texts, padding=True, return_tensors="pt")
    hidden = reference.text_encoder(**tokens).last_hidden_state[:, 0]
    expected = torch.nn.functional.normalize(reference.text_proj(hidden), dim=-1)
    torch.testing.assert_close(torch.tensor(blip.run(None, texts)), expected, atol=1e-5, rtol=1e-4)


def test_retrieval_pads_texts_after_them_whatever_the_tokenizer_says(tmp_path):
    """A text's ITC embedding is its first token's: batched texts must not start with padding."""
    from blipkit.tasks import load

    itm = save_tiny_blip2s(tmp_path, opt_padding_side="left")["itm"]
    embed = load(TASKS["text-embedding"], itm)
    texts = ["a cat", "a rocket lifting off from its pad at dawn"]
    batched = torch.tensor(embed.run(None, texts))
    alone = torch.tensor([embed.run(None, [text])[0] for text in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


def test_blip2_jobs_and_cli_equal_the_pipeline(blip2_dirs, tmp_path):
    pipe = blipkit.pipeline("vqa", model=blip2_dirs["t5"])
    expected = [pipe(image=str(p), question="what is this?", max_new_tokens=4)[0]["answer"] for p in IMAGES]
    answers = tmp_path / "answers.jsonl"
    jobs.ask([str(p) for p in IMAGES], answers, question="what is this?", model=str(blip2_dirs["t5"]),
             max_new_tokens=4, progress=False)  # fmt: skip
    assert [json.loads(line)["answer"] for line in answers.read_text().splitlines()] == expected

    scores = tmp_path / "scores.jsonl"
    jobs.match([str(p) for p in IMAGES], scores, text="a cat", model=str(blip2_dirs["itm"]), progress=False)
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    matched = blipkit.pipeline("image-text-matching", model=blip2_dirs["itm"])
    for image, row in zip(IMAGES, rows, strict=True):
        assert row["itm"] == pytest.approx(matched(str(image), "a cat")[0]["score"], abs=1e-5)

    env = {k: v for k, v in os.environ.items() if k != "BLIPKIT_DEBUG"}
    cli = subprocess.run([str(BLIPKIT), "ask", str(IMAGES[0]), "what is this?", "--model", str(blip2_dirs["t5"]),
                          "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == expected[0]


def test_registry_reads_the_family_from_config_json(blip2_dirs, tmp_path):
    assert checkpoint_model_type(blip2_dirs["opt"]) == "blip-2"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BlipForConditionalGeneration"]}))
    assert checkpoint_model_type(tmp_path) == "blip"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match="is a 'llava' checkpoint \\(config.json model_type\\); blipkit runs"):
        blipkit.pipeline("image-to-text", model=tmp_path)
    with pytest.raises(ValueError, match="unknown job 'describe'; choose one of caption, ask, match, embed"):
        task_for_command("describe")
    assert {t.command for t in TASKS.values()} >= {"caption", "ask", "match", "embed"}


def test_blip2_job_on_ray_equals_the_local_job(blip2_dirs, tmp_path):
    pytest.importorskip("ray", reason="Ray is the 'ray' extra (part of the 'test' extra)")
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("BLIPKIT_DEBUG", None)
    common = [str(BLIPKIT), "ask", str(IMAGES[0].parent), "what is this?", "--model", str(blip2_dirs["opt"]),
              "--batch-size", "3", "--max-new-tokens", "4"]  # fmt: skip
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        result = subprocess.run([*common, "--out", str(out), "--engine", engine], capture_output=True, text=True,
                                timeout=600, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[engine] = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["id"])
    assert runs["ray"] == runs["local"] and len(runs["local"]) == len(IMAGES)
