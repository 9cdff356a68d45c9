"""Batch jobs never lose, mix or silently skip rows: distinct inputs get distinct ids, a resume checks which job
wrote its output, a damaged shard is a failed row, a wrong format or a busy output is refused before any work, and
the command's exit code and one-line messages say what happened."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from blipkit import jobs
from blipkit.jobs.sources import iter_items
from tests.conftest import IMAGES
from tests.unit.conftest import webdataset_shard

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


# ------------------------------------------------------------------------------------------------- 8. messages
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
