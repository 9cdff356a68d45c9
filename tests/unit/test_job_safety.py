"""Batch jobs never lose, mix or silently skip rows: distinct inputs get distinct ids, a resume checks which job
wrote its output, a damaged shard is a failed row, a wrong format or a busy output is refused before any work, and
the command's exit code and one-line messages say what happened."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from blipkit import jobs
from blipkit.jobs.sinks import OutputError
from blipkit.jobs.sources import iter_items
from tests.builders.datasets import webdataset_shard
from tests.conftest import IMAGES

BLIPKIT = Path(sys.executable).parent / "blipkit"
AFRESH = "add --overwrite (overwrite=True in Python) to start afresh, or choose another output"


def blipkit(*args: object, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BLIPKIT), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def caption_options(models) -> dict:
    return {"model": str(models / "caption"), "max_new_tokens": 3, "progress": False}


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, fileobj=io.BytesIO(data))


# ------------------------------------------------------------------------------------------------- 1. ids
def test_shards_with_one_file_name_in_two_folders_keep_apart(caption_options, tmp_path):
    shards = [tmp_path / folder / "part-0.tar" for folder in ("a", "b")]
    for shard in shards:
        shard.parent.mkdir()
        webdataset_shard(shard)
    out = tmp_path / "captions.jsonl"
    first = jobs.caption([str(shards[0])], out, **caption_options)
    both = jobs.caption([str(s) for s in shards], out, **caption_options)
    assert (first.done, both.done, both.skipped) == (3, 3, 3)
    assert sorted(r["id"] for r in read_jsonl(out)) == [f"{shard}/{key:05d}" for shard in shards for key in range(3)]
    assert len(list(iter_items([str(shards[0]), str(shards[0])]))) == 3  # the same shard twice is one input


def test_repeated_table_keys_keep_every_row(caption_options, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:
        keys = ["x", "x", "y", "x#1"]  # the last is a real key that looks like the second row's id
        csv.writer(f).writerows([["key", "path"], *[[k, str(p)] for k, p in zip(keys, IMAGES, strict=True)]])
    ids = [item.id for item in iter_items([str(table)])]
    assert ids == [f"{table}:x", f"{table}:x#1", f"{table}:y", f"{table}:x#1#3"]
    assert [item.id for item in iter_items([str(table), str(table)])] == ids  # stable, and the same table is one input
    parquet = tmp_path / "same-key.parquet"
    pq.write_table(pa.Table.from_pylist([{"key": "k", "jpg": p.read_bytes()} for p in IMAGES[:3]]), parquet)
    summary = jobs.caption(parquet, tmp_path / "c.jsonl", **caption_options)
    assert (summary.done, summary.failed) == (3, 0)
    assert [r["id"] for r in read_jsonl(tmp_path / "c.jsonl")] == [f"{parquet}:k", f"{parquet}:k#1", f"{parquet}:k#2"]


# ------------------------------------------------------------------------------------------------- 2. resume
def test_resume_refuses_an_output_another_job_wrote(models, tmp_path):
    out = tmp_path / "answers.jsonl"
    vqa = ["--model", models / "vqa", "--max-new-tokens", "3"]
    first = blipkit("ask", IMAGES[0], "is it red?", "--out", out, *vqa)
    assert first.returncode == 0, first.stderr
    other_question = blipkit("ask", IMAGES[0], "how many?", "--out", out, *vqa)
    assert other_question.returncode == 1
    assert last_line(other_question) == (
        f"blipkit: error: {out} holds another job's results (question: 'is it red?' in the output, 'how many?' now); "
        + AFRESH
    )
    other_task = blipkit("caption", IMAGES[0], "--out", out, "--model", models / "caption")
    assert other_task.returncode == 1
    assert f"holds another job's results (task: 'ask' in the output, 'caption' now; model: '{models / 'vqa'}'" in (
        last_line(other_task)
    )
    afresh = blipkit("ask", IMAGES[0], "how many?", "--out", out, *vqa, "--overwrite")
    assert afresh.returncode == 0, afresh.stderr
    assert "ask: done 1, failed 0, skipped 0" in afresh.stderr
    assert [r["question"] for r in read_jsonl(out)] == ["how many?"]
    sidecar = json.loads((tmp_path / "answers.jsonl.meta.json").read_text())
    assert sidecar["settings"]["question"] == "how many?" and sidecar["settings"]["max_new_tokens"] == 3


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_resume_checks_generation_settings(caption_options, tmp_path, suffix):
    out = tmp_path / f"captions.{suffix}"
    jobs.caption([str(IMAGES[0])], out, **caption_options)
    assert (tmp_path / f"captions.{suffix}.meta.json").exists()
    assert jobs.caption([str(IMAGES[0])], out, **caption_options).skipped == 1
    for change, difference in (
        ({"max_new_tokens": 4}, "max_new_tokens: 3 in the output, 4 now"),
        ({"prompt": "a picture of"}, "prompt: unset in the output, 'a picture of' now"),
        ({"dtype": "bfloat16"}, "dtype: unset in the output, 'bfloat16' now"),
        ({"num_beams": 2}, "num_beams: unset in the output, 2 now"),
    ):
        with pytest.raises(OutputError, match=re.escape(f"{out} holds another job's results ({difference}); {AFRESH}")):
            jobs.caption([str(IMAGES[0])], out, **{**caption_options, **change})
    changed = jobs.caption([str(IMAGES[0])], out, **{**caption_options, "max_new_tokens": 4}, overwrite=True)
    assert (changed.done, changed.skipped) == (1, 0)


def test_npy_output_records_its_job_too(models, tmp_path):
    out = tmp_path / "e.npy"
    jobs.embed([str(IMAGES[0])], out, model=str(models / "itm"), progress=False)
    with pytest.raises(OutputError, match=re.escape("(quantize: unset in the output, 'int8' now)")):
        jobs.embed([str(IMAGES[0])], out, model=str(models / "itm"), quantize="int8", progress=False)
    out.write_bytes(b"not an array")
    with pytest.raises(OutputError, match=re.escape(f"{out} is not a .npy array (")):
        jobs.embed([str(IMAGES[0])], out, model=str(models / "itm"), progress=False)
    # The index beside e.npy is one of its files: a caption job's e.jsonl is not silently taken over.
    caption = tmp_path / "c.jsonl"
    caption.write_text('{"id": "x", "status": "ok", "error": null, "caption": "a cat"}\n')
    with pytest.raises(OutputError, match=re.escape(f"{tmp_path / 'c.jsonl'} exists, but no c.npy.meta.json")):
        jobs.embed([str(IMAGES[0])], tmp_path / "c.npy", model=str(models / "itm"), progress=False)


def test_an_output_without_a_record_is_refused_and_overwrite_starts_afresh(caption_options, tmp_path):
    out = tmp_path / "old.jsonl"
    row = json.dumps({"id": str(IMAGES[0]), "status": "ok", "error": None, "caption": "stale"}) + "\n"
    out.write_text(row)
    with pytest.raises(OutputError) as refused:
        jobs.caption([str(IMAGES[0])], out, **caption_options)
    assert str(refused.value) == (
        f"{out} exists, but no old.jsonl.meta.json beside it says which job wrote it (an older blipkit or another "
        f"tool), so its rows cannot be resumed; {AFRESH}"
    )
    assert out.read_text() == row
    summary = jobs.caption([str(IMAGES[0])], out, **caption_options, overwrite=True)
    assert (summary.done, summary.skipped) == (1, 0) and read_jsonl(out)[0]["caption"] != "stale"
    empty = tmp_path / "empty.jsonl"
    empty.touch()  # no rows to mistake for this job's
    assert jobs.caption([str(IMAGES[0])], empty, **caption_options).done == 1


# ------------------------------------------------------------------------------------------------- 3. shards
def test_damaged_shards_become_failed_rows_and_the_job_goes_on(caption_options, tmp_path):
    good = tmp_path / "good.tar"
    webdataset_shard(good)
    with tarfile.open(good) as tar:
        second_image = tar.getmembers()[2]  # 00001.jpg, after 00000.jpg and 00000.txt
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: second_image.offset_data + 1000])
    fake = tmp_path / "fake.tar"
    fake.write_text("not a tar at all")
    out = tmp_path / "captions.jsonl"
    summary = jobs.caption([str(cut), str(fake), str(good)], out, **caption_options)
    assert (summary.done, summary.failed) == (4, 2)
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert rows[f"{cut}/00000"]["status"] == "ok"
    assert rows[str(cut)]["error"] == (
        f"{cut} is a damaged tar archive: unexpected end of data after 2 files (the last '00000.txt'); the rest is "
        "unread"
    )
    assert rows[str(fake)]["error"] == f"{fake} is not a tar archive (nor a compressed one)"
    between = tmp_path / "between.tar"  # tarfile alone reads a shard cut between two members as whole
    between.write_bytes(good.read_bytes()[: second_image.offset])
    assert [(i.id, i.error) for i in iter_items([str(between)])] == [
        (f"{between}/00000", None),
        (
            str(between),
            f"{between} is a damaged tar archive: cut short (no end-of-archive block) after 2 files (the last "
            "'00000.txt'); the rest is unread",
        ),
    ]


def test_shard_samples_without_an_image_are_failed_items(tmp_path):
    shard = tmp_path / "s.tar"
    image = IMAGES[0].read_bytes()
    write_tar(shard, {"./a.jpg": image, "./a.txt": b"cat", "./b.txt": b"dog", "./c.jpg": image, "./a.png": image})
    items = list(iter_items([str(shard)]))
    assert [(i.id, i.text, i.error) for i in items] == [
        (f"{shard}/./a", "cat", None),
        (f"{shard}/./b", "dog", f"{shard}: sample './b' has no image (.jpg, .jpeg, .png, .webp); found ./b.txt"),
        (f"{shard}/./c", None, None),
        (f"{shard}/./a#3", None, None),  # the key came back later: a sample of its own
    ]


# ------------------------------------------------------------------------------------------------- 4. formats
def test_unsupported_output_format_is_refused_before_any_work(tmp_path):
    missing_model = tmp_path / "no-model"  # never loaded: the format is checked first
    out = tmp_path / "x.npy"
    result = blipkit("caption", IMAGES[0], "--out", out, "--model", missing_model)
    assert result.returncode == 1
    assert last_line(result) == f"blipkit: error: cannot write {out}: caption jobs write .jsonl, .csv or .parquet"
    embed = blipkit("embed", IMAGES[0], "--out", tmp_path / "e.csv", "--model", missing_model)
    assert embed.returncode == 1
    assert (
        last_line(embed)
        == f"blipkit: error: cannot write {tmp_path / 'e.csv'}: embed jobs write .npy, .parquet or .jsonl"
    )
    for task, extra in (("ask", {"question": "why?"}), ("match", {"text": "a cat"})):
        with pytest.raises(OutputError, match=f"cannot write .*x.npy: {task} jobs write .jsonl, .csv or .parquet$"):
            jobs.run(task, [str(IMAGES[0])], out, model=str(missing_model), **extra)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- 5. lock
def test_a_second_job_on_the_same_output_fails_at_once(models, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        Image.open(IMAGES[i % 4]).resize((24, 24)).save(folder / f"{i:02d}.png")
    out = tmp_path / "captions.jsonl"
    command = ["caption", folder, "--out", out, "--model", models / "caption", "--batch-size", "1"]
    first = subprocess.Popen([str(BLIPKIT), *map(str, command)], stderr=subprocess.PIPE, text=True)
    sidecar = tmp_path / "captions.jsonl.meta.json"  # written under the lock, before the model loads
    deadline = time.monotonic() + 60
    while not sidecar.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # holds the lock, wherever it stopped
    try:
        assert first.poll() is None, "the first job ended before the second started: " + first.stderr.read()
        second = blipkit(*command)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert last_line(second) == (
        f"blipkit: error: {out} is in use by another job (it holds {out}.lock): wait for it to finish, or choose "
        "another output"
    )
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "caption: done 6, failed 0, skipped 0" in stderr
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 6
    assert not (tmp_path / "captions.jsonl.lock").exists()


# ------------------------------------------------------------------------------------------------- 6. exit code
def test_a_job_where_every_image_failed_exits_3(models, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not an image")
    (folder / "b.png").write_bytes(IMAGES[1].read_bytes()[:300])
    out = tmp_path / "captions.jsonl"
    command = ["caption", folder, "--out", out, "--model", models / "caption"]
    failed = blipkit(*command)
    assert failed.returncode == 3
    summary, message = failed.stderr.strip().splitlines()[-2:]
    assert summary.startswith("caption: done 0, failed 2, skipped 0")
    assert message == f"blipkit: error: every image failed; the reasons are in the error column of {out}"
    again = blipkit(*command)
    assert again.returncode == 0 and last_line(again).startswith("caption: done 0, failed 0, skipped 2")


# ------------------------------------------------------------------------------------------------- 7. Ray GPUs
def test_bad_ray_gpus_values_are_refused(tmp_path):
    result = blipkit("caption", IMAGES[0], "--out", tmp_path / "c.jsonl", "--ray-gpus", "-1")
    assert result.returncode == 2
    assert last_line(result) == (
        "blipkit caption: error: argument --ray-gpus: GPUs per Ray actor must be a share of one GPU (0 to 1) or a "
        "whole number, got -1"
    )
    for value in (1.5, float("nan"), -0.5, float("inf")):
        with pytest.raises(ValueError, match="GPUs per Ray actor must be a share of one GPU"):
            jobs.caption([str(IMAGES[0])], tmp_path / "c.jsonl", engine="ray", ray_gpus_per_actor=value)
    assert list(tmp_path.iterdir()) == []


def test_ray_without_the_gpus_asked_for_fails_at_once(models, tmp_path):
    pytest.importorskip("ray", reason="Ray is the 'ray' extra (part of the 'test' extra)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "RAY_USAGE_STATS_ENABLED": "0"}
    result = blipkit("caption", IMAGES[0], "--out", tmp_path / "c.jsonl", "--model", models / "caption",
                     "--engine", "ray", "--ray-actors", "2", "--ray-gpus", "0.5", env=env, timeout=300)  # fmt: skip
    assert result.returncode == 1
    assert last_line(result) == (
        "blipkit: error: the Ray cluster has no GPUs, but 2 actors x 0.5 GPUs need 1: lower --ray-gpus (0 runs on "
        "CPUs) or --ray-actors, or join a cluster with GPUs (--ray-address)"
    )


# ------------------------------------------------------------------------------------------------- 8. messages
def test_cli_messages_name_the_output(models, tmp_path):
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n")
    other_tool = blipkit("caption", IMAGES[0], "--out", notes, "--model", models / "caption")
    assert other_tool.returncode == 1
    assert last_line(other_tool) == (
        f"blipkit: error: {notes} exists, but no notes.jsonl.meta.json beside it says which job wrote it (an older "
        f"blipkit or another tool), so its rows cannot be resumed; {AFRESH}"
    )
    assert notes.read_text() == "my notes\n"
    under_a_file = blipkit("caption", IMAGES[0], "--out", notes / "c.jsonl", "--model", models / "caption")
    assert under_a_file.returncode == 1
    assert (
        last_line(under_a_file) == f"blipkit: error: cannot write {notes / 'c.jsonl'}: {notes} is a file, not a folder"
    )


def test_a_damaged_output_is_named_with_what_was_expected(caption_options, tmp_path):
    for name, damage, message in (
        ("a.jsonl", "hello\n", "a.jsonl line 1 is not a job's row: expected JSON lines, each an object with an 'id'"),
        ("b.jsonl", '{"caption": "x"}\n', "b.jsonl line 1 is not a job's row: expected JSON lines, each an object"),
        ("c.csv", "name,size\n", "c.csv has the columns name, size; this job writes id, status, error, caption; "),
        ("d.parquet", "hello", "d.parquet is not a Parquet file (Could not open Parquet input source"),
    ):
        out = tmp_path / name
        jobs.caption([str(IMAGES[0])], out, **caption_options)
        out.write_text(damage)
        with pytest.raises(OutputError, match=re.escape(f"{tmp_path / message}")):
            jobs.caption([str(IMAGES[0])], out, **caption_options)


def test_a_table_row_without_an_image_is_a_failed_row_naming_it(caption_options, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "t.csv"
    table.write_text(f"key,path,caption\na,,first\nb,{IMAGES[0]},second\n")
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"jpg": None, "path": None}, {"jpg": IMAGES[1].read_bytes(), "path": None}]),
                   parquet)  # fmt: skip
    out = tmp_path / "captions.jsonl"
    summary = jobs.caption([str(table), str(parquet)], out, **caption_options)
    assert (summary.done, summary.failed) == (2, 2)
    errors = {r["id"]: r["error"] for r in read_jsonl(out)}
    assert errors[f"{table}:a"] == f"{table} row 0 (key 'a') has no image: its column 'path' is empty"
    assert errors[f"{parquet}:0"] == f"{parquet} row 0 has no image: its image columns 'jpg' and 'path' are empty"
    assert errors[f"{table}:b"] is None and errors[f"{parquet}:1"] is None
