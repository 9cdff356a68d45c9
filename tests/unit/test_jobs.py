"""Batch jobs: every source layout, every output format, failed rows, and resuming after a kill."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blipkit import jobs
from blipkit.jobs.sources import SourceError, iter_items
from tests.builders.datasets import img2dataset_parquet, webdataset_shard
from tests.conftest import IMAGES

BLIPKIT = Path(sys.executable).parent / "blipkit"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------------- sources
def test_sources_folder_glob_list_and_single_file(photos, tmp_path):
    folder = [item.id for item in iter_items([str(photos)])]
    assert len(folder) == 9 and str(photos / "sub" / "broken.jpg") in folder and not any("notes" in i for i in folder)
    assert [i.id for i in iter_items([str(photos / "sub" / "*.png")])] == sorted(
        str(p) for p in (photos / "sub").glob("*.png")
    )
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nphotos/0.jpg\n\nphotos/1.png\n")
    assert [i.id for i in iter_items([str(listing)])] == [
        str(tmp_path / "photos/0.jpg"),
        str(tmp_path / "photos/1.png"),
    ]
    assert [i.id for i in iter_items([str(photos / "0.jpg"), str(photos / "0.jpg")])] == [str(photos / "0.jpg")]


def test_sources_tables_and_shards(tmp_path):
    img2dataset_parquet(tmp_path / "part.parquet")
    items = list(iter_items([str(tmp_path / "part.parquet")]))
    assert [i.id for i in items] == [f"{tmp_path / 'part.parquet'}:{i:09d}" for i in range(4)]
    assert items[1].text == "photo number 1" and items[1].image == IMAGES[1].read_bytes()
    with (tmp_path / "table.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["path", "caption"], *[[str(p), p.stem] for p in IMAGES]])
    assert [i.image for i in iter_items([str(tmp_path / "table.csv")])] == [str(p) for p in IMAGES]
    webdataset_shard(tmp_path / "shard-000.tar")
    shard = list(iter_items([str(tmp_path / "shard-000.tar")]))
    assert [(i.id, i.text) for i in shard] == [
        (f"{tmp_path / 'shard-000.tar'}/{i:05d}", f"caption {i}") for i in range(3)
    ]


def test_source_errors(tmp_path):
    with pytest.raises(SourceError, match="input not found: .*nowhere"):
        list(iter_items([str(tmp_path / "nowhere")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="empty names no images"):
        list(iter_items([str(tmp_path / "empty")]))
    (tmp_path / "t.csv").write_text("name,size\na,1\n")
    with pytest.raises(SourceError, match="t.csv has no image column: expected one of .*; found name, size"):
        list(iter_items([str(tmp_path / "t.csv")]))


# ------------------------------------------------------------------------------------------------- jobs
def test_caption_job_every_format_records_failures_and_skips_on_rerun(models, photos, tmp_path):
    from blipkit import pipeline

    expected = pipeline("image-to-text", model=models / "caption")(str(photos / "0.jpg"), max_new_tokens=5)
    outputs = {}
    for suffix in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"captions.{suffix}"
        summary = jobs.caption(photos, out, model=str(models / "caption"), batch_size=3, max_new_tokens=5)
        assert (summary.done, summary.failed, summary.skipped) == (8, 1, 0)
        again = jobs.caption(photos, out, model=str(models / "caption"), batch_size=3, max_new_tokens=5)
        assert (again.done, again.failed, again.skipped) == (0, 0, 9)
        outputs[suffix] = out
    rows = read_jsonl(outputs["jsonl"])
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == 9 == len(by_id)
    assert by_id[str(photos / "0.jpg")]["caption"] == expected[0]["generated_text"]
    broken = by_id[str(photos / "sub" / "broken.jpg")]
    assert broken["status"] == "failed" and "truncated or corrupt" in broken["error"] and "caption" not in broken
    with outputs["csv"].open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["id"], r["caption"]) for r in table] == [(r["id"], r.get("caption", "")) for r in rows]
    import pyarrow.parquet as pq

    assert [r["caption"] for r in pq.read_table(outputs["parquet"]).to_pylist()] == [r.get("caption") for r in rows]
    assert not (tmp_path / "captions.parquet.partial.jsonl").exists()


def test_ask_match_and_embed_jobs(models, tmp_path):
    img2dataset_parquet(tmp_path / "part.parquet")
    answers = tmp_path / "answers.jsonl"
    jobs.ask(tmp_path / "part.parquet", answers, question="what is this?", model=str(models / "vqa"), max_new_tokens=4)
    assert [set(r) for r in read_jsonl(answers)] == [{"id", "status", "error", "question", "answer"}] * 4

    scores = tmp_path / "scores.jsonl"
    jobs.match(tmp_path / "part.parquet", scores, model=str(models / "itm"), batch_size=3)
    rows = read_jsonl(scores)
    assert sorted(r["text"] for r in rows) == sorted(f"photo number {i}" for i in range(4))
    assert all(0 <= r["itm"] <= 1 and -1 <= r["itc"] <= 1 for r in rows)
    fixed = tmp_path / "fixed.jsonl"
    jobs.match([str(p) for p in IMAGES], fixed, text="a cat", model=str(models / "itm"))
    assert {r["text"] for r in read_jsonl(fixed)} == {"a cat"}
    no_text = tmp_path / "no_text.jsonl"
    jobs.match([str(IMAGES[0])], no_text, model=str(models / "itm"))
    assert read_jsonl(no_text)[0]["error"].startswith("no text to match")

    vectors = tmp_path / "embeddings.npy"
    (tmp_path / "imgs").mkdir()
    for p in IMAGES:
        shutil.copy(p, tmp_path / "imgs")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    summary = jobs.embed(tmp_path / "imgs", vectors, model=str(models / "itm"), batch_size=2)
    assert (summary.done, summary.failed) == (4, 1)
    array = np.load(vectors)
    index = read_jsonl(tmp_path / "embeddings.jsonl")
    assert array.shape == (4, 24) and np.allclose(np.linalg.norm(array, axis=1), 1, atol=1e-5)
    assert [r["row"] for r in index if r["status"] == "ok"] == [0, 1, 2, 3]
    assert jobs.embed(tmp_path / "imgs", vectors, model=str(models / "itm")).skipped == 5
    with pytest.raises(ValueError, match=r"e.csv: embed jobs write .npy, .parquet or .jsonl$"):
        jobs.embed(tmp_path / "imgs", tmp_path / "e.csv", model=str(models / "itm"))


def test_resume_after_a_record_cut_in_half(models, photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    full = tmp_path / "full.jsonl"
    jobs.caption(photos, full, model=str(models / "caption"), max_new_tokens=5)
    lines = full.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:17])  # three records and the start of a fourth
    shutil.copy(tmp_path / "full.jsonl.meta.json", tmp_path / "captions.jsonl.meta.json")  # the same job wrote it
    summary = jobs.caption(photos, out, model=str(models / "caption"), max_new_tokens=5)
    assert (summary.skipped, summary.done + summary.failed) == (3, 6)
    assert sorted(read_jsonl(out), key=lambda r: r["id"]) == sorted(read_jsonl(full), key=lambda r: r["id"])


# ------------------------------------------------------------------------------------------------- kills
@pytest.fixture
def many_photos(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(160):
        Image.open(IMAGES[i % 4]).resize((24 + i % 7, 24)).save(root / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_killed_job_resumes_without_loss_or_duplicates(models, many_photos, tmp_path, how, suffix):
    out = tmp_path / f"captions.{suffix}"
    journal = out if suffix == "jsonl" else tmp_path / f"captions.{suffix}.partial.jsonl"
    command = [str(BLIPKIT), "caption", str(many_photos), "--out", str(out), "--model", str(models / "caption"),
               "--batch-size", "2", "--max-new-tokens", "12"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_bytes().splitlines()) >= 6:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the job ended before it could be interrupted: " + process.stderr.read()
    process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    if how == signal.SIGINT:
        assert process.returncode == 130 and "rerun the same command to resume" in stderr
    partial = journal.read_bytes()
    written = [json.loads(line) for line in partial.splitlines() if line.endswith(b"}")]
    assert 6 <= len(written) < 160
    assert not out.exists() or suffix == "jsonl"  # a journal becomes the final file only on completion

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"skipped {len(written)}" in resumed.stderr
    if suffix == "jsonl":
        rows = read_jsonl(out)
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 160
    assert all(r["status"] == "ok" and r["caption"] for r in rows)
    # What was written before the kill is kept as it was.
    assert rows[: len(written)] == written


def test_job_cli_summary_and_errors(models, photos, tmp_path):
    out = tmp_path / "c.csv"
    result = subprocess.run(
        [str(BLIPKIT), "caption", str(photos), "--out", str(out), "--model", str(models / "caption")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "caption: done 8, failed 1, skipped 0" in result.stderr
    bad = subprocess.run([str(BLIPKIT), "caption", str(photos), "--out", str(tmp_path / "c.txt")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith("c.txt: caption jobs write .jsonl, .csv or .parquet")
    assert not (tmp_path / "c.txt").exists()


def test_quantized_worker_matches_a_job_run_quantized(models, tmp_path):
    """quantize="int8" reaches the worker's model, and a job's captions are that model's."""
    from blipkit.jobs.workers import Worker, WorkerSpec
    from blipkit.modeling.quantize import Int8Linear

    spec = WorkerSpec("caption", model=str(models / "caption"), quantize="int8", generate_kwargs={"max_new_tokens": 4})
    worker = Worker(spec)
    assert any(isinstance(m, Int8Linear) for m in worker.model.modules())
    out = tmp_path / "captions.jsonl"
    jobs.caption([str(IMAGES[0])], out, model=str(models / "caption"), quantize="int8", max_new_tokens=4)
    expected = worker.process(list(iter_items([str(IMAGES[0])])))
    assert [r["caption"] for r in read_jsonl(out)] == [r["caption"] for r in expected]
