"""Training rows from every layout the batch jobs read: what each task keeps, and the exact reason for each row it
skips."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from blipkit.jobs.sources import SourceError, iter_items
from blipkit.train.data import Example, Skipped, read_examples
from tests.builders.datasets import img2dataset_parquet, tar_of, webdataset_shard
from tests.conftest import IMAGES


def write_jsonl(path: Path, lines: list[dict | str]) -> Path:
    """Rows as JSON lines; a str is written as the line itself (a damaged one)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """The four photographs beside the tables that name them by relative path."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in IMAGES:
        shutil.copy(path, folder / path.name)
    return folder


# ------------------------------------------------------------------------------------------------- captions
def test_jsonl_captions_keep_good_rows_and_say_why_each_other_row_is_skipped(photos, tmp_path):
    table = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"path": "photos/astronaut.jpg", "caption": "  an astronaut \n"},
            {"id": "c", "image": "photos/chelsea.png", "text": "a cat"},  # a path in a bytes column: still a path
            {"path": "photos/coffee.jpg"},
            "",  # blank lines are no rows
            {"path": "photos/coffee.jpg", "caption": "   "},
            {"key": "k7", "url": "https://example.com/rocket.jpg", "caption": ["two", "captions"]},
            '{"path": "photos/rocket.jpg", "caption": "cut',
            '["a", "list"]',
            {"caption": "no image at all"},
            {"path": "", "caption": "an empty path"},
        ],
    )
    examples, skipped = read_examples(table, "caption")
    assert examples == [
        Example(f"{table}:0", str(photos / "astronaut.jpg"), caption="an astronaut"),
        Example(f"{table}:c", str(photos / "chelsea.png"), caption="a cat"),
    ]
    expected_columns = "jpg, image, png, webp, bytes, image_bytes, path, image_path, file, filename, url"
    assert skipped == [
        Skipped(f"{table}:2", f"{table} line 3 has no caption (no caption, text or txt)"),
        Skipped(f"{table}:3", f"{table} line 5 has an empty caption"),
        Skipped(f"{table}:k7", f"{table} line 6 (key 'k7') has a caption that is not text: ['two', 'captions']"),
        Skipped(f"{table}:5", f"{table} line 7 is not JSON: Unterminated string starting at (column 42)"),
        Skipped(f"{table}:6", f"{table} line 8 is a JSON array, not an object"),
        Skipped(
            f"{table}:7",
            f"{table} line 9 has no image: none of its columns is an image column "
            f"(expected one of {expected_columns}; found caption)",
        ),
        Skipped(f"{table}:8", f"{table} line 10 has no image: its column 'path' is empty"),
    ]
    assert read_examples([str(table)], "retrieval") == (examples, skipped)  # retrieval needs what captions need


def test_a_line_that_is_not_utf8_is_one_skipped_row(photos, tmp_path):
    table = tmp_path / "t.jsonl"
    good = json.dumps({"path": "photos/coffee.jpg", "caption": "coffee"}).encode()
    table.write_bytes(b'{"caption": "caf\xe9"}\n' + good + b"\n")
    examples, skipped = read_examples(table, "caption")
    assert [e.caption for e in examples] == ["coffee"]
    assert skipped == [
        Skipped(f"{table}:0", f"{table} line 1 is not UTF-8 text (invalid continuation byte at byte 17)")
    ]


def test_parquet_and_csv_tables(photos, tmp_path):
    img2dataset_parquet(tmp_path / "part.parquet")
    examples, skipped = read_examples(tmp_path / "part.parquet", "caption")
    assert skipped == []
    assert [(e.id, e.image, e.caption) for e in examples] == [
        (f"{tmp_path / 'part.parquet'}:{i:09d}", path.read_bytes(), f"photo number {i}")
        for i, path in enumerate(IMAGES)
    ]
    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:  # a CSV has every column in every row: missing is empty there
        csv.writer(f).writerows([["image", "caption"], ["photos/rocket.jpg", "a rocket"], ["photos/coffee.jpg", ""]])
    examples, skipped = read_examples(table, "caption")
    assert examples == [Example(f"{table}:0", str(photos / "rocket.jpg"), caption="a rocket")]
    assert skipped == [Skipped(f"{table}:1", f"{table} row 1 has an empty caption")]


# ------------------------------------------------------------------------------------------------- VQA
def test_vqa_rows_take_one_answer_or_a_list_with_repeats(photos, tmp_path):
    vqav2 = [{"answer": "black", "answer_confidence": "yes"}, {"answer": "black"}, {"answer": "dark"}]
    table = write_jsonl(
        tmp_path / "vqa.jsonl",
        [
            {"id": "q1", "path": "photos/chelsea.png", "question": " what is it? ", "answer": "a cat"},
            {"id": "q2", "path": "photos/chelsea.png", "question": "what color?", "answers": ["black", " black", ""]},
            {"id": "q3", "path": "photos/chelsea.png", "question": "what color?", "answers": vqav2},
            {"id": "q4", "path": "photos/coffee.jpg", "question": "what is it?", "answer": ["coffee", "a cup"]},
            {"id": "q5", "path": "photos/coffee.jpg", "answer": "coffee"},
            {"id": "q6", "path": "photos/coffee.jpg", "question": " ", "answer": "coffee"},
            {"id": "q7", "path": "photos/coffee.jpg", "question": 7, "answer": "coffee"},
            {"id": "q8", "path": "photos/coffee.jpg", "question": "what is it?"},
            {"id": "q9", "path": "photos/coffee.jpg", "question": "what is it?", "answers": [" ", ""]},
            {"id": "q10", "path": "photos/coffee.jpg", "question": "how many?", "answers": [2, 2]},
            {"id": "q11", "path": "photos/coffee.jpg", "question": "what is it?", "answer": None, "answers": "cup"},
        ],
    )
    examples, skipped = read_examples(table, "vqa")
    cat, coffee = str(photos / "chelsea.png"), str(photos / "coffee.jpg")
    assert examples == [
        Example(f"{table}:q1", cat, question="what is it?", answers=("a cat",)),
        Example(f"{table}:q2", cat, question="what color?", answers=("black", "black")),
        Example(f"{table}:q3", cat, question="what color?", answers=("black", "black", "dark")),
        Example(f"{table}:q4", coffee, question="what is it?", answers=("coffee", "a cup")),
        Example(f"{table}:q11", coffee, question="what is it?", answers=("cup",)),
    ]
    assert skipped == [
        Skipped(f"{table}:q5", f"{table} line 5 (key 'q5') has no question"),
        Skipped(f"{table}:q6", f"{table} line 6 (key 'q6') has an empty question"),
        Skipped(f"{table}:q7", f"{table} line 7 (key 'q7') has a question that is not text: 7"),
        Skipped(f"{table}:q8", f"{table} line 8 (key 'q8') has no answer (no answers or answer)"),
        Skipped(f"{table}:q9", f"{table} line 9 (key 'q9') has only blank answers"),
        Skipped(f"{table}:q10", f"{table} line 10 (key 'q10') has answers [2, 2]: expected a text or a list of texts"),
    ]


def test_a_csv_gives_its_answers_as_json_text(photos, tmp_path):
    table = tmp_path / "vqa.csv"
    with table.open("w", newline="") as f:
        csv.writer(f).writerows(
            [
                ["path", "question", "answer", "answers"],
                ["photos/rocket.jpg", "what is it?", "", '["rocket", "rocket", "tower"]'],
                ["photos/rocket.jpg", "is it up?", "yes", ""],
                ["photos/rocket.jpg", "what is it?", "", '["rocket", "tower"'],
            ]
        )
    examples, skipped = read_examples(table, "vqa")
    assert [e.answers for e in examples] == [("rocket", "rocket", "tower"), ("yes",)]
    assert skipped == [
        Skipped(
            f"{table}:2",
            f'{table} row 2 has answers \'["rocket", "tower"\': expected a text or a list of texts',
        )
    ]


# ------------------------------------------------------------------------------------------------- shards, folders
def test_webdataset_shards_take_captions_from_txt_or_json(tmp_path):
    webdataset_shard(tmp_path / "plain.tar")
    examples, skipped = read_examples(tmp_path / "plain.tar", "caption")
    assert skipped == []
    assert [(e.id, e.image, e.caption) for e in examples] == [
        (f"{tmp_path / 'plain.tar'}/{i:05d}", IMAGES[i].read_bytes(), f"caption {i}") for i in range(3)
    ]

    shard = tmp_path / "vqa.tar"
    image = IMAGES[0].read_bytes()
    sample = {"caption": "an astronaut", "question": "who is it?", "answers": ["an astronaut", "a woman"]}
    tar_of(
        shard,
        {
            "a.jpg": image, "a.json": json.dumps(sample).encode(),
            "b.jpg": image, "b.txt": b"from the txt", "b.json": json.dumps({"caption": "from the json"}).encode(),
            "c.jpg": image, "c.json": b"{broken",
            "d.jpg": image,
            "e.txt": b"a caption without an image",
        },
    )  # fmt: skip
    examples, skipped = read_examples(shard, "caption")
    assert [(e.id, e.caption) for e in examples] == [(f"{shard}/a", "an astronaut"), (f"{shard}/b", "from the txt")]
    assert skipped == [
        Skipped(f"{shard}/c", f"{shard}: sample 'c' has a c.json that is not JSON: Expecting property name enclosed "
                "in double quotes: line 1 column 2 (char 1)"),
        Skipped(f"{shard}/d", f"{shard} sample 'd' has no caption (no caption, text or txt)"),
        Skipped(f"{shard}/e", f"{shard}: sample 'e' has no image (.jpg, .jpeg, .png, .webp); found e.txt"),
    ]  # fmt: skip
    examples, _ = read_examples(shard, "vqa")
    assert examples == [Example(f"{shard}/a", image, question="who is it?", answers=("an astronaut", "a woman"))]


def test_a_folder_of_images_with_same_name_txt_captions(tmp_path):
    folder = tmp_path / "dataset"
    (folder / "more").mkdir(parents=True)
    for path, caption in ((folder / "a.jpg", "a woman in a space suit\n"), (folder / "more" / "b.png", "a cat")):
        shutil.copy(IMAGES[0], path)
        path.with_suffix(".txt").write_text(caption)
    shutil.copy(IMAGES[1], folder / "c.jpg")  # no caption
    shutil.copy(IMAGES[2], folder / "d.jpg")
    (folder / "d.txt").write_text("\n")
    (folder / "notes.txt").write_text("not a caption: no image is called notes")
    examples, skipped = read_examples(folder, "caption")
    assert examples == [
        Example(str(folder / "a.jpg"), str(folder / "a.jpg"), caption="a woman in a space suit"),
        Example(str(folder / "more" / "b.png"), str(folder / "more" / "b.png"), caption="a cat"),
    ]
    assert skipped == [
        Skipped(str(folder / "c.jpg"), f"{folder / 'c.jpg'} has no caption: there is no c.txt beside it"),
        Skipped(str(folder / "d.jpg"), f"{folder / 'd.jpg'} has an empty caption"),
    ]
    assert read_examples(str(folder / "a.jpg"), "caption")[0] == examples[:1]  # one image file, its .txt too
    listing = tmp_path / "list.txt"
    listing.write_text("dataset/a.jpg\nhttps://example.com/x.jpg\n")
    assert read_examples(listing, "caption") == (
        examples[:1],
        [
            Skipped(
                "https://example.com/x.jpg", "https://example.com/x.jpg has no caption: an image given by URL has none"
            )
        ],
    )


def test_the_jobs_read_the_same_captions_and_carry_the_rest_of_a_row(tmp_path):
    """Training reads through the jobs' sources: a job sees a JSONL table and a folder's .txt captions too."""
    shutil.copy(IMAGES[0], tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("an astronaut")
    table = write_jsonl(tmp_path / "t.jsonl", [{"key": "x", "path": "a.jpg", "text": "t", "question": "who?"}])
    items = list(iter_items([str(tmp_path / "a.jpg"), str(table)]))
    assert [(i.id, i.image, i.text, i.columns, i.where) for i in items] == [
        (str(tmp_path / "a.jpg"), str(tmp_path / "a.jpg"), "an astronaut", {}, ""),
        (
            f"{table}:x",
            str(tmp_path / "a.jpg"),
            "t",
            {"key": "x", "text": "t", "question": "who?"},
            f"{table} line 1 (key 'x')",
        ),
    ]


# ------------------------------------------------------------------------------------------------- errors
def test_inputs_that_cannot_be_read_raise(tmp_path):
    with pytest.raises(SourceError, match=r"input not found: .*nowhere\.jsonl$"):
        read_examples(tmp_path / "nowhere.jsonl", "caption")
    (tmp_path / "t.csv").write_text("caption,question\na,b\n")
    with pytest.raises(
        SourceError, match=r"t\.csv has no image column: expected one of jpg, .*; found caption, question"
    ):
        read_examples(tmp_path / "t.csv", "caption")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SourceError, match=r"empty\.jsonl names no images$"):
        read_examples(tmp_path / "empty.jsonl", "caption")
    with pytest.raises(ValueError, match="^unknown task 'captions': expected one of caption, vqa, retrieval$"):
        read_examples(tmp_path / "t.csv", "captions")
