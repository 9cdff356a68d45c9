"""The synthetic shapes data set: fixed by its seed, captions and answers that say what the image shows, in BERT's
vocabulary, and written in the layouts training and the metrics read."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from blipkit.evaluate.captions import evaluate_captions
from blipkit.evaluate.vqa import evaluate_vqa
from blipkit.train.data import read_examples
from blipkit.train.synthetic import COLORS, POSITIONS, QUESTIONS, SHAPES, shapes, write_shapes
from tests.conftest import VOCAB


def test_a_seed_fixes_the_data_set():
    first, again, other = shapes(12, seed=3), shapes(12, seed=3), shapes(12, seed=4)
    assert [s.caption for s in first] == [s.caption for s in again]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, again, strict=True))
    assert [s.image.tobytes() for s in first] != [s.image.tobytes() for s in other]
    assert {s.image.size for s in shapes(3, seed=0, size=40)} == {(40, 40)}


def test_captions_and_answers_say_what_the_image_shows():
    samples = shapes(300, seed=0)
    assert {s.shape for s in samples} == set(SHAPES) and {s.color for s in samples} == set(COLORS)
    assert {s.position for s in samples} == set(POSITIONS) and {s.asked for s in samples} == set(QUESTIONS)
    for sample in samples:
        assert sample.caption == f"a {sample.color} {sample.shape} {POSITIONS[sample.position][1]}"
        assert sample.question == QUESTIONS[sample.asked]
        assert (
            sample.answer == {"color": sample.color, "shape": sample.shape, "position": sample.position}[sample.asked]
        )
        pixels = np.asarray(sample.image)
        ink = (pixels == COLORS[sample.color]).all(axis=2)
        assert ink.sum() > 60 and (ink | (pixels == 255).all(axis=2)).all()  # one colour on white, nothing else
        rows, columns = np.nonzero(ink)
        centre = np.array([columns.mean(), rows.mean()]) / 64
        nearest = min(POSITIONS, key=lambda p: np.linalg.norm(centre - np.array(POSITIONS[p][0])))
        assert nearest == sample.position


def test_shapes_fill_their_box_as_their_kind_does():
    """A square fills its bounding box, a circle pi/4 of it, a triangle half: the shapes differ, as named."""
    fill = {}
    for sample in shapes(60, seed=1, size=128):
        ink = (np.asarray(sample.image) == COLORS[sample.color]).all(axis=2)
        rows, columns = np.nonzero(ink)
        box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
        fill.setdefault(sample.shape, []).append(ink.sum() / box)
    assert all(f > 0.97 for f in fill["square"])
    assert all(0.72 < f < 0.85 for f in fill["circle"])
    assert all(0.45 < f < 0.6 for f in fill["triangle"])


def test_every_word_is_in_bert_uncased_vocabulary():
    vocabulary = set(VOCAB.read_text().split("\n"))
    texts = [text for s in shapes(300, seed=0) for text in (s.caption, s.question, s.answer)]
    words = {word for text in texts for word in text.replace("?", " ").split()}
    assert words <= vocabulary, words - vocabulary


def test_written_data_set_is_what_training_and_the_metrics_read(tmp_path):
    data = write_shapes(tmp_path / "shapes", count=6, seed=2, size=48)
    assert data == tmp_path / "shapes" / "data.jsonl"
    samples = shapes(6, seed=2, size=48)
    examples, skipped = read_examples(data, "caption")
    assert skipped == [] and [e.caption for e in examples] == [s.caption for s in samples]
    for example, sample in zip(examples, samples, strict=True):
        with Image.open(example.image) as image:
            assert image.format == "PNG" and image.tobytes() == sample.image.tobytes()
    questions, _ = read_examples(data, "vqa")
    assert [(e.question, e.answers) for e in questions] == [(s.question, (s.answer,)) for s in samples]

    # The trainer's predictions carry the training rows' ids; the metrics pair them with the references.
    predictions = tmp_path / "predictions.jsonl"
    rows = [{"id": e.id, "caption": s.caption, "answer": s.answer} for e, s in zip(examples, samples, strict=True)]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = evaluate_captions(predictions, tmp_path / "shapes" / "references.jsonl", use_meteor=False)
    assert scores["BLEU-4"] == pytest.approx(1.0) and scores["ROUGE-L"] == pytest.approx(1.0)
    vqa = evaluate_vqa(predictions, tmp_path / "shapes" / "vqa_references.jsonl")
    assert vqa["accuracy"] == pytest.approx(100.0)
    assert set(vqa["by_answer_type"]) == {s.asked for s in samples}


def test_runs_as_a_module(tmp_path):
    command = [sys.executable, "-m", "blipkit.train.synthetic"]
    done = subprocess.run(
        [*command, str(tmp_path / "out"), "--count", "3", "--seed", "5"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote 3 images and {tmp_path / 'out' / 'data.jsonl'}\n"
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    refused = subprocess.run(
        [*command, str(tmp_path / "no"), "--count", "0", "--seed", "5"], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        "python -m blipkit.train.synthetic: error: count must be at least 1 and size at least 16 pixels, "
        "got count=0, size=64"
    )
