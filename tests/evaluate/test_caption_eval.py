"""``eval caption`` end to end: a caption job's rows (JSONL, CSV, Parquet) against JSONL or COCO references."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from blipkit.evaluate.captions import caption_scores, evaluate_captions
from blipkit.evaluate.inputs import EvaluationInputError, id_candidates
from blipkit.evaluate.metric_commands import main

NO_METEOR = {"use_meteor": False}


def job_rows(candidates, failed=()):
    """Rows as the caption job writes them."""
    return [
        {"id": key, "status": "failed", "error": "cannot identify image file", "caption": None}
        if key in failed
        else {"id": key, "status": "ok", "error": None, "caption": text}
        for key, text in candidates.items()
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_references(path, references):
    return write_jsonl(path, [{"id": key, "captions": texts} for key, texts in references.items()])


@pytest.fixture
def small(corpus):
    """The first 30 images of the corpus."""
    candidates, references = corpus
    keys = list(candidates)[:30]
    return {k: candidates[k] for k in keys}, {k: references[k] for k in keys}


def test_jsonl_predictions_and_references(tmp_path, small):
    candidates, references = small
    predictions = write_jsonl(tmp_path / "captions.jsonl", job_rows(candidates))
    refs = write_references(tmp_path / "refs.jsonl", references)
    assert evaluate_captions(predictions, refs, **NO_METEOR) == caption_scores(candidates, references, **NO_METEOR)


def test_csv_and_parquet_predictions(tmp_path, small):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    candidates, references = small
    rows = job_rows(candidates)
    with (tmp_path / "captions.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["id", "status", "error", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "captions.parquet")
    refs = write_references(tmp_path / "refs.jsonl", references)
    expected = caption_scores(candidates, references, **NO_METEOR)
    assert evaluate_captions(tmp_path / "captions.csv", refs, **NO_METEOR) == expected
    assert evaluate_captions(tmp_path / "captions.parquet", refs, **NO_METEOR) == expected


def coco_annotations(references):
    """A COCO captions file of ``references``: image i is COCO_val2014_<i>.jpg."""
    images, annotations = [], []
    for index, texts in enumerate(references.values(), start=1):
        images.append({"id": index, "file_name": f"COCO_val2014_{index:012d}.jpg"})
        annotations += [{"image_id": index, "id": len(annotations) + n, "caption": t} for n, t in enumerate(texts)]
    return {"images": images, "annotations": annotations}


@pytest.mark.parametrize(
    "name",
    [
        "photos/val2014/COCO_val2014_{index:012d}.jpg",  # a folder job: the path ends in the file name
        "COCO_val2014_{index:012d}.jpg",
        "{index}",  # the image id itself
        "test.csv:{index}",  # a table job's TABLE:KEY
        "shards/part-0.tar/{index:012d}",  # a webdataset key: the number is the image id
    ],
)
def test_coco_references_match_by_id_or_file_name(tmp_path, small, name):
    candidates, references = small
    renamed = {name.format(index=i): text for i, text in enumerate(candidates.values(), start=1)}
    predictions = write_jsonl(tmp_path / "captions.jsonl", job_rows(renamed))
    annotations = tmp_path / "captions_val2014.json"
    annotations.write_text(json.dumps(coco_annotations(references)))
    assert evaluate_captions(predictions, annotations, **NO_METEOR) == caption_scores(
        candidates, references, **NO_METEOR
    )


def test_coco_results_file_as_predictions(tmp_path, small):
    candidates, references = small
    results = [{"image_id": i, "caption": text} for i, text in enumerate(candidates.values(), start=1)]
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "annotations.json").write_text(json.dumps(coco_annotations(references)))
    scores = evaluate_captions(tmp_path / "results.json", tmp_path / "annotations.json", **NO_METEOR)
    assert scores == caption_scores(candidates, references, **NO_METEOR)


def test_failed_rows_are_reported_and_not_scored(tmp_path, small):
    candidates, references = small
    failed = list(candidates)[:4]
    predictions = write_jsonl(tmp_path / "captions.jsonl", job_rows(candidates, failed))
    refs = write_references(tmp_path / "refs.jsonl", references)
    messages = []
    scores = evaluate_captions(predictions, refs, warn=messages.append, **NO_METEOR)
    kept = [k for k in candidates if k not in failed]
    assert scores == caption_scores({k: candidates[k] for k in kept}, {k: references[k] for k in kept}, **NO_METEOR)
    assert messages == [
        "blipkit: 4 predictions of 30 failed and are not scored: "
        "photos/000000000000.jpg, photos/000000000001.jpg, photos/000000000002.jpg, ..."
    ]


def test_id_candidates():
    assert id_candidates("t.csv:photos/COCO_val2014_000000000042.jpg") == [
        "t.csv:photos/COCO_val2014_000000000042.jpg",
        "photos/COCO_val2014_000000000042.jpg",
        "COCO_val2014_000000000042.jpg",
        "42",
    ]
    assert id_candidates("http://x.org/a.jpg")[0] == "http://x.org/a.jpg"


@pytest.fixture
def files(tmp_path):
    """Predictions a.jpg, b.jpg (good rows) and references for them, to break one way or another."""
    predictions = write_jsonl(tmp_path / "p.jsonl", job_rows({"a.jpg": "a dog", "b.jpg": "a cat"}))
    references = write_references(tmp_path / "r.jsonl", {"a.jpg": ["a dog"], "b.jpg": ["a cat"]})
    return tmp_path, predictions, references


def error_of(predictions, references):
    with pytest.raises(EvaluationInputError) as caught:
        evaluate_captions(predictions, references, **NO_METEOR)
    return str(caught.value)


def test_bad_predictions_are_named(files):
    tmp, predictions, references = files
    write_jsonl(tmp / "answers.jsonl", [{"id": "a.jpg", "status": "ok", "error": None, "answer": "yes"}])
    assert error_of(tmp / "answers.jsonl", references) == (
        f"{tmp}/answers.jsonl has no 'caption' column (it has id, status, error, answer); "
        "expected the caption job's output: rows with 'id' and 'caption'"
    )
    write_jsonl(tmp / "noid.jsonl", [{"image": "a.jpg", "caption": "a dog"}])
    assert error_of(tmp / "noid.jsonl", references) == (
        f"{tmp}/noid.jsonl has no 'id' column (it has image, caption); "
        "expected the caption job's output: rows with 'id' and 'caption'"
    )
    write_jsonl(tmp / "twice.jsonl", job_rows({"a.jpg": "a dog"}) * 2)
    assert error_of(tmp / "twice.jsonl", references) == f"{tmp}/twice.jsonl has the id a.jpg twice"
    (tmp / "broken.jsonl").write_text('{"id": "a.jpg", "caption": "a dog"}\n{"id": "b.jpg", "cap\n')
    assert error_of(tmp / "broken.jsonl", references) == f"{tmp}/broken.jsonl line 2 is not a JSON object"
    write_jsonl(tmp / "null.jsonl", [{"id": "a.jpg", "status": "ok", "caption": None}])
    assert (
        error_of(tmp / "null.jsonl", references)
        == f"{tmp}/null.jsonl: the row with id a.jpg has caption None, not text"
    )
    assert error_of(tmp / "missing.jsonl", references) == f"{tmp}/missing.jsonl does not exist"
    (tmp / "p.txt").write_text("a dog\n")
    assert error_of(tmp / "p.txt", references) == (
        f"cannot read {tmp}/p.txt: expected a .jsonl, .csv, .parquet or .json file"
    )
    write_jsonl(tmp / "allfailed.jsonl", job_rows({"a.jpg": "", "b.jpg": ""}, failed={"a.jpg", "b.jpg"}))
    with pytest.raises(EvaluationInputError, match="^every prediction in .*allfailed.jsonl failed"):
        evaluate_captions(tmp / "allfailed.jsonl", references, warn=lambda message: None, **NO_METEOR)


def test_unmatched_ids_are_named(files):
    tmp, predictions, references = files
    write_jsonl(tmp / "more.jsonl", job_rows({k: "a dog" for k in ["a.jpg", "b.jpg", "x.jpg", "y.jpg"]}))
    assert error_of(tmp / "more.jsonl", references) == (
        f"2 predictions in {tmp}/more.jsonl have no reference in {references}: x.jpg, y.jpg"
    )
    many = {f"{i}.jpg": ["a dog"] for i in range(5)}
    write_references(tmp / "many.jsonl", {"a.jpg": ["a dog"], "b.jpg": ["a cat"], **many})
    assert error_of(predictions, tmp / "many.jsonl") == (
        f"5 references in {tmp}/many.jsonl have no prediction in {predictions}: 0.jpg, 1.jpg, 2.jpg, ..."
    )
    write_references(tmp / "one.jsonl", {"a.jpg": ["a dog"]})
    assert error_of(predictions, tmp / "one.jsonl") == (
        f"1 prediction in {predictions} has no reference in {tmp}/one.jsonl: b.jpg"
    )
    write_jsonl(tmp / "same.jsonl", job_rows({"x/a.jpg": "a dog", "y/a.jpg": "a dog", "b.jpg": "a cat"}))
    assert error_of(tmp / "same.jsonl", references) == (
        f"the predictions x/a.jpg and y/a.jpg in {tmp}/same.jsonl are both for reference a.jpg"
    )


def test_bad_references_are_named(files):
    tmp, predictions, _ = files
    write_jsonl(tmp / "r1.jsonl", [{"id": "a.jpg", "caption": "a dog"}])
    assert error_of(predictions, tmp / "r1.jsonl") == (
        f"{tmp}/r1.jsonl line 1 has no 'captions'; "
        "expected rows with 'id' and 'captions' (a list of reference captions)"
    )
    write_jsonl(tmp / "r2.jsonl", [{"id": "a.jpg", "captions": "a dog"}])
    assert (
        error_of(predictions, tmp / "r2.jsonl")
        == f"{tmp}/r2.jsonl line 1: 'captions' must be a non-empty list of texts"
    )
    (tmp / "r3.json").write_text(json.dumps({"images": []}))
    assert error_of(predictions, tmp / "r3.json") == (
        f"{tmp}/r3.json is not a COCO captions file (an object with 'images' and 'annotations'), "
        "nor JSON lines (.jsonl) with 'id' and 'captions'"
    )
    (tmp / "r4.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}))
    assert error_of(predictions, tmp / "r4.json") == f"{tmp}/r4.json: 1 image without captions: 1"


def test_command_prints_one_json_object(files, capsys):
    _, predictions, references = files
    code = main(["caption", "--predictions", str(predictions), "--references", str(references), "--no-meteor"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    scores = json.loads(out)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]
    assert scores["BLEU-1"] == pytest.approx(1.0)


def test_command_fails_in_one_line(files, capsys):
    tmp, predictions, _ = files
    code = main(["caption", "--predictions", str(predictions), "--references", str(tmp / "none.jsonl")])
    out, err = capsys.readouterr()
    assert (code, out, err) == (1, "", f"blipkit: error: {tmp}/none.jsonl does not exist\n")


def test_module_runs_as_a_command(files):
    _, predictions, references = files
    result = subprocess.run(
        [sys.executable, "-m", "blipkit.evaluate.metric_commands", "caption", "--predictions", str(predictions),
         "--references", str(references), "--no-meteor"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["CIDEr"] > 0


def test_strip_prompt(tmp_path, small, capsys):
    candidates, references = small
    prompted = {k: f"A picture of {text.strip()}" for k, text in candidates.items()}
    predictions = write_jsonl(tmp_path / "captions.jsonl", job_rows(prompted))
    refs = write_references(tmp_path / "refs.jsonl", references)
    stripped = {k: text.strip() for k, text in candidates.items()}
    expected = caption_scores(stripped, references, **NO_METEOR)
    assert evaluate_captions(predictions, refs, strip_prompt="a picture of ", **NO_METEOR) == expected
    assert evaluate_captions(predictions, refs, **NO_METEOR) != expected
    argv = ["caption", "--predictions", str(predictions), "--references", str(refs), "--no-meteor"]
    assert main([*argv, "--strip-prompt", "a picture of"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected)


def test_predict_captions_the_images_first(tmp_path, capsys):
    from blipkit import jobs
    from tests.builders.checkpoints import save_tiny_blips
    from tests.conftest import IMAGES

    model = save_tiny_blips(tmp_path / "models")["caption"]
    references = write_references(tmp_path / "refs.jsonl", {p.name: ["a photo of a thing"] for p in IMAGES})
    images = [str(p) for p in IMAGES]
    argv = ["caption", "--predict", *images, "--model", str(model), "--references", str(references), "--no-meteor"]
    assert main([*argv, "--predictions", str(tmp_path / "written.jsonl"), "--prompt", "a picture of"]) == 0
    scores = json.loads(capsys.readouterr().out)
    jobs.caption(images, tmp_path / "job.jsonl", model=str(model), prompt="a picture of", progress=False)
    expected = evaluate_captions(tmp_path / "job.jsonl", references, strip_prompt="a picture of", **NO_METEOR)
    assert scores == pytest.approx(expected)
    assert (tmp_path / "written.jsonl").read_text() == (tmp_path / "job.jsonl").read_text()
    assert main(["caption", "--references", str(references)]) == 1
    assert capsys.readouterr().err == (
        "blipkit: error: give --predictions P (a job's output), or --predict DATA to run the model on it first\n"
    )
