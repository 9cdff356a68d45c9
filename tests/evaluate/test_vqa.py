"""VQA accuracy: the official answer normalization, the leave-one-out formula by hand, and ``eval vqa``'s inputs."""

from __future__ import annotations

import json

import pytest

from blipkit.evaluate.inputs import EvaluationInputError
from blipkit.evaluate.metric_commands import main
from blipkit.evaluate.vqa import answer_accuracy, evaluate_vqa, normalize_answer, normalize_punctuation

# The VQA evaluation script's normalization of a model's answer (vqaEval.py: processPunctuation, then
# processDigitArticle), case by case.
NORMALIZED = {
    "yes.": "yes",  # periodStrip: a period not before a digit goes
    "Yes": "yes",
    " yes\n": "yes",
    "\tno\t": "no",
    "two": "2",  # manualMap: number words to digits
    "Two dogs": "2 dogs",
    "none": "0",
    "ten": "10",
    "eleven": "eleven",  # only zero to ten
    "the dog": "dog",  # articles go
    "a": "",
    "an apple": "apple",
    "dont": "don't",  # contractions: the apostrophe comes back
    "isnt": "isn't",
    "it's": "it's",  # the apostrophe is not in the script's punctuation list: it stays
    "its": "its",
    "1.5": "1.5",  # a period before a digit stays
    "5.": "5",
    "1,000": "1000",  # a digit-comma-digit anywhere: every mark is removed, not spaced
    "black/white": "black white",  # a mark between two characters becomes a space
    "black / white": "black white",  # next to a space it goes
    "t-shirt": "t shirt",
    "yes!": "yes",
    "what?": "what",
    "(red)": "red",
    "red, white and blue": "red white and blue",
    "hot dog.": "hot dog",
}


@pytest.mark.parametrize("answer", list(NORMALIZED))
def test_normalization(answer):
    assert normalize_answer(answer) == NORMALIZED[answer]


def test_punctuation_rule_decides_on_the_original_text():
    # "a, b/c": ", " is next to a space, so the comma goes; "/" is not, so it becomes a space.
    assert normalize_punctuation("a, b/c") == "a b c"
    assert normalize_punctuation("3,5 a/b") == "35 ab"  # digit-comma-digit: every mark removed


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        (0, 0.0),
        # One human said it: left out (1 of 10 subsets) 0 others match; otherwise 1 does, min(1/3, 1).
        (1, 9 * (1 / 3) / 10),
        # Two: left out (2 subsets) 1 match -> 1/3; otherwise 2 -> 2/3.
        (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),
        # Three: left out (3 subsets) 2 match -> 2/3; otherwise 3 -> 1.
        (3, (3 * (2 / 3) + 7 * 1) / 10),
        (4, 1.0),  # left out, still 3 others: 1
        (10, 1.0),
    ],
)
def test_accuracy_by_hand(matching, expected):
    humans = ["dog"] * matching + ["cat"] * (10 - matching)
    assert answer_accuracy("dog", humans) == pytest.approx(expected)
    assert answer_accuracy("The dog.", humans) == pytest.approx(expected)  # normalized first


def test_accuracy_by_hand_values():
    assert answer_accuracy("dog", ["dog"] + ["cat"] * 9) == pytest.approx(0.3)
    assert answer_accuracy("dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert answer_accuracy("dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)


def test_humans_are_normalized_as_the_script_does():
    # Humans who disagree get the punctuation rule ("t-shirt" -> "t shirt"), so the answer matches three of them.
    assert answer_accuracy("t-shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)
    # Humans who agree are compared as they are: the script's quirk (official annotations are normalized already).
    assert answer_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
    assert answer_accuracy("2", ["2"] * 10) == 1.0


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ask_rows(answers, question="what is it?", failed=()):
    """Rows as the ask job writes them."""
    return [
        {"id": key, "status": "failed" if key in failed else "ok", "error": "bad image" if key in failed else None,
         "question": question, "answer": None if key in failed else answer}
        for key, answer in answers.items()
    ]  # fmt: skip


@pytest.fixture
def jsonl_files(tmp_path):
    predictions = write_jsonl(tmp_path / "answers.jsonl", ask_rows({"q1": "yes", "q2": "Two", "q3": "red"}))
    references = write_jsonl(
        tmp_path / "refs.jsonl",
        [
            {"id": "q1", "answers": ["yes"] * 10, "answer_type": "yes/no"},
            {"id": "q2", "answers": ["2"] * 2 + ["3"] * 8, "answer_type": "number"},
            {"id": "q3", "answers": ["red"] + ["blue"] * 9, "answer_type": "other"},
        ],
    )
    return tmp_path, predictions, references


def test_jsonl_references(jsonl_files):
    _, predictions, references = jsonl_files
    result = evaluate_vqa(predictions, references)
    assert result == {
        "accuracy": pytest.approx(100 * (1.0 + 0.6 + 0.3) / 3),
        "by_answer_type": {"number": pytest.approx(60.0), "other": pytest.approx(30.0), "yes/no": 100.0},
    }


def test_without_answer_types(tmp_path):
    predictions = write_jsonl(tmp_path / "a.jsonl", ask_rows({"q1": "yes"}))
    references = write_jsonl(tmp_path / "r.jsonl", [{"id": "q1", "answers": ["yes", "no", "yes"]}])
    assert evaluate_vqa(predictions, references) == {"accuracy": pytest.approx(100 * (2 * (1 / 3) + 2 / 3) / 3)}


def official_files(tmp_path):
    """VQAv2-format annotation and question files for three questions about two COCO images."""
    questions = [
        {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
        {"image_id": 42, "question": "How many people?", "question_id": 421},
        {"image_id": 7, "question": "Is it raining?", "question_id": 70},
    ]
    answers = {420: ["red"] * 10, 421: ["2"] * 3 + ["3"] * 7, 70: ["no"] * 9 + ["yes"]}
    types = {420: "other", 421: "number", 70: "yes/no"}
    annotations = [
        {"question_id": q, "image_id": q // 10, "answer_type": types[q], "question_type": "what",
         "multiple_choice_answer": a[0], "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1}
                                                     for i, x in enumerate(a)]}
        for q, a in answers.items()
    ]  # fmt: skip
    (tmp_path / "annotations.json").write_text(json.dumps({"annotations": annotations}))
    (tmp_path / "questions.json").write_text(json.dumps({"questions": questions}))
    return tmp_path / "annotations.json", tmp_path / "questions.json"


EXPECTED_OFFICIAL = {
    "accuracy": pytest.approx(100 * (1.0 + 0.9 + 1.0) / 3),
    "by_answer_type": {"number": pytest.approx(90.0), "other": 100.0, "yes/no": 100.0},
}


def test_official_files_by_question_id(tmp_path):
    annotations, _ = official_files(tmp_path)
    predictions = write_jsonl(tmp_path / "p.jsonl", ask_rows({"420": "Red", "421": "two", "t.csv:70": "no"}))
    assert evaluate_vqa(predictions, annotations) == EXPECTED_OFFICIAL
    results = [
        {"question_id": 420, "answer": "red"},
        {"question_id": 421, "answer": "2"},
        {"question_id": 70, "answer": "no"},
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert evaluate_vqa(tmp_path / "results.json", annotations) == EXPECTED_OFFICIAL


def test_official_files_by_image_and_question(tmp_path):
    annotations, questions = official_files(tmp_path)
    rows = [
        *ask_rows({"val2014/COCO_val2014_000000000042.jpg": "red"}, "What color is the bus?"),
        *ask_rows({"t.csv:0": "2"}, "How many people?"),  # a table row: its id is not the image...
        *ask_rows({"val2014/COCO_val2014_000000000007.jpg": "no"}, "Is it raining?"),
    ]
    rows[1]["id"] = "t.csv:COCO_val2014_000000000042.jpg"  # ...unless its key is the file name
    predictions = write_jsonl(tmp_path / "p.jsonl", rows)
    assert evaluate_vqa(predictions, annotations, questions) == EXPECTED_OFFICIAL


def test_failed_rows_are_reported(jsonl_files):
    tmp, _, references = jsonl_files
    predictions = write_jsonl(tmp / "p.jsonl", ask_rows({"q1": "yes", "q2": "Two", "q3": "x"}, failed={"q3"}))
    messages = []
    result = evaluate_vqa(predictions, references, warn=messages.append)
    assert result["accuracy"] == pytest.approx(80.0)
    assert messages == ["blipkit: 1 prediction of 3 failed and is not scored: q3"]


def error_of(*paths):
    with pytest.raises(EvaluationInputError) as caught:
        evaluate_vqa(*paths)
    return str(caught.value)


def test_bad_inputs_are_named(jsonl_files):
    tmp, predictions, references = jsonl_files
    write_jsonl(tmp / "captions.jsonl", [{"id": "q1", "status": "ok", "error": None, "caption": "a dog"}])
    assert error_of(tmp / "captions.jsonl", references) == (
        f"{tmp}/captions.jsonl has no 'answer' column (it has id, status, error, caption); "
        "expected the ask job's output: rows with 'id' and 'answer'"
    )
    write_jsonl(tmp / "r1.jsonl", [{"id": "q1", "answer": "yes"}])
    assert error_of(predictions, tmp / "r1.jsonl") == (
        f"{tmp}/r1.jsonl line 1 has no 'answers'; expected rows with 'id' and 'answers' (the human answers)"
    )
    write_jsonl(tmp / "r2.jsonl", [{"id": "q1", "answers": "yes"}])
    assert (
        error_of(predictions, tmp / "r2.jsonl")
        == f"{tmp}/r2.jsonl: the answers of q1 must be a non-empty list of texts, got 'yes'"
    )
    write_jsonl(tmp / "r3.jsonl", [{"id": "q1", "answers": ["yes"]}, {"id": "q2", "answers": ["2"]}])
    assert error_of(predictions, tmp / "r3.jsonl") == (
        f"1 prediction in {predictions} has no reference in {tmp}/r3.jsonl: q3"
    )
    write_jsonl(tmp / "p2.jsonl", ask_rows({"q1": "yes"}))
    assert error_of(tmp / "p2.jsonl", references) == (
        f"2 references in {references} have no prediction in {tmp}/p2.jsonl: q2, q3"
    )
    assert error_of(predictions, references, tmp / "q.json") == (
        f"a questions file ({tmp}/q.json) goes with the official annotation file, not with {references}"
    )
    annotations, _ = official_files(tmp)
    (tmp / "q.json").write_text("{}")
    assert error_of(predictions, annotations, tmp / "q.json") == (
        f"{tmp}/q.json is not a VQA questions file (an object with 'questions')"
    )
    (tmp / "a.json").write_text(json.dumps({"annotations": [{"question_id": 1, "answers": []}]}))
    assert (
        error_of(predictions, tmp / "a.json")
        == f"{tmp}/a.json: the answers of 1 must be a non-empty list of texts, got []"
    )


def test_command_prints_one_json_object(jsonl_files, capsys):
    _, predictions, references = jsonl_files
    assert main(["vqa", "--predictions", str(predictions), "--references", str(references)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    result = json.loads(out)
    assert result["accuracy"] == pytest.approx(100 * 1.9 / 3)
    assert set(result["by_answer_type"]) == {"yes/no", "number", "other"}


def test_a_file_names_number_is_not_a_question_id(tmp_path):
    annotations, questions = official_files(tmp_path)
    # Image 70 does not exist; question 70 does (about image 7). The row must not pair with it by the number.
    rows = ask_rows({"val2014/COCO_val2014_000000000070.jpg": "no"}, "Is it raining?")
    predictions = write_jsonl(tmp_path / "p.jsonl", rows)
    assert error_of(predictions, annotations, questions) == (
        f"1 prediction in {predictions} has no reference in {annotations}: val2014/COCO_val2014_000000000070.jpg"
    )


def test_predict_asks_each_rows_question_first(tmp_path, capsys):
    from blipkit import jobs
    from blipkit.train.synthetic import write_shapes
    from tests.builders.checkpoints import save_tiny_blips

    model = save_tiny_blips(tmp_path / "models")["vqa"]
    data = write_shapes(tmp_path / "shapes", 6, seed=0)
    references = data.parent / "vqa_references.jsonl"
    argv = ["vqa", "--predict", str(data), "--model", str(model), "--references", str(references)]
    assert main([*argv, "--predictions", str(tmp_path / "written.jsonl")]) == 0
    scores = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (tmp_path / "written.jsonl").read_text().splitlines()]
    asked = [json.loads(line)["question"] for line in data.read_text().splitlines()]
    assert [r["question"] for r in rows] == asked and all(r["status"] == "ok" for r in rows)
    assert scores == evaluate_vqa(tmp_path / "written.jsonl", references)
    # The same answers as asking each image its question on its own.
    for row, question in zip(rows[:2], asked, strict=False):
        alone = tmp_path / f"alone-{row['id'].rsplit(':', 1)[1]}.jsonl"
        jobs.ask([data], alone, question=question, model=str(model), progress=False)
        answers = {json.loads(line)["id"]: json.loads(line)["answer"] for line in alone.read_text().splitlines()}
        assert answers[row["id"]] == row["answer"]


def test_an_ask_job_without_a_question_fails_the_rows_that_have_none(tmp_path):
    from blipkit import jobs
    from tests.builders.checkpoints import save_tiny_blips
    from tests.conftest import IMAGES

    model = save_tiny_blips(tmp_path / "models")["vqa"]
    table = tmp_path / "rows.jsonl"
    rows = [{"id": "a", "path": str(IMAGES[0]), "question": "what is it?"}, {"id": "b", "path": str(IMAGES[1])}]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = jobs.ask(table, tmp_path / "out.jsonl", model=str(model), progress=False)
    written = {r["id"].rsplit(":", 1)[1]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert (summary.done, summary.failed) == (1, 1)
    assert written["a"]["question"] == "what is it?" and written["a"]["answer"]
    assert written["b"]["error"] == "no question to ask: the source has no question column and no question"
