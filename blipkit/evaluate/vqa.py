"""``blipkit eval vqa``: VQAv2 accuracy of an ask job's output, with the official evaluation's answer normalization.

An answer scores min(#humans who gave it / 3, 1), averaged over the ten ways of leaving one of the ten humans out,
and is compared after the normalization of the VQA evaluation script (``vqaEval.py``) - as LAVIS, the library of
BLIP's authors, runs it: the model's answer always normalized, the humans' given the punctuation rule when they
disagree. (The official repository's 2021 revision normalizes the model's answer only when the humans disagree,
so there "Yes." scores 0 against ten "yes"; here, as in LAVIS and the script before it, it scores 1.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blipkit.evaluate.inputs import (
    EvaluationInputError,
    id_candidates,
    pair,
    read_json,
    read_jsonl,
    read_predictions,
    report_failed,
    to_stderr,
)

# vqaEval.py's contractions (the official script's table, as LAVIS also ships it): an answer word written
# without its apostrophe gets it back. Quirks kept: capitalised keys never match (words are lowercased first),
# and "somebody'd" maps to "somebodyd".
CONTRACTIONS = dict(
    entry.split(" ", 1)
    for entry in """aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've
hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's
Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll
let's let's|maam ma'am|mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've
mustnt mustn't|mustve must've|neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at
'ows'at 'ow's'at|'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll|someones someone's
somethingd something'd|somethingd've something'd've|something'dve something'd've|somethingll something'll
thats that's|thered there'd|thered've there'd've|there'dve there'd've|therere there're|theres there's
theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll|whatre what're|whats what's
whatve what've|whens when's|whered where'd|wheres where's|whereve where've|whod who'd|whod've who'd've
who'dve who'd've|wholl who'll|whos who's|whove who've|whyll why'll|whyre why're|whys why's|wont won't
wouldve would've|wouldnt wouldn't|wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll
y'allll y'all'll|yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've
you'dve you'd've|youll you'll|youre you're|youve you've""".replace("\n", "|").split("|")
)
# vqaEval.py's manualMap: number words up to ten as digits ("none" counts as 0).
NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset(["a", "an", "the"])
# vqaEval.py's punct list (the period has its own rule; ':' and "'" are not in it, so "it's" keeps its apostrophe).
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# periodStrip, as written: "(?!<=\d)" is a negative lookahead for the text "<=" and a digit (a mistyped
# lookbehind), so in effect every period not followed by a digit goes - "1.5" keeps its period, "5." loses it.
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")  # commaStrip: its presence anywhere changes the punctuation rule


def normalize_punctuation(text: str) -> str:
    """vqaEval.py's processPunctuation: a mark next to a space (or any mark, once the text has a digit-comma-digit
    anywhere) is removed; a mark between two characters becomes a space ("black/white" -> "black white")."""
    out = text
    remove_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        # Decided on the original text, as the script does, and applied to the text as changed so far.
        if remove_all or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD.sub("", out)


def normalize_words(text: str) -> str:
    """vqaEval.py's processDigitArticle: lowercase, number words as digits, articles dropped, contractions."""
    words = [NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """A model's answer as vqaEval.py compares it: tabs and newlines as spaces, stripped, then punctuation, then
    numbers, articles and contractions."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return normalize_words(normalize_punctuation(answer))


def answer_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """One question's VQA accuracy: for each human left out in turn, min(#other humans who gave ``answer`` / 3, 1),
    averaged. ``answer`` is normalized fully; the humans' answers (normalized already, in the official
    annotations) get the punctuation rule only, and only when they disagree - as vqaEval.py does."""
    if not human_answers:
        raise ValueError("a question needs at least one human answer")
    answer = normalize_answer(answer)
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [normalize_punctuation(h) for h in humans]
    matches = sum(h == answer for h in humans)
    # Leaving out a human who gave the answer leaves matches - 1 others; leaving out another leaves matches.
    total = sum(min(1.0, (matches - (h == answer)) / 3) for h in humans)
    return total / len(humans)


def read_vqa_references(
    path: str | os.PathLike, questions_path: str | os.PathLike | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``({key: {"answers": [...], "answer_type": ...}}, {alias: key})`` from JSONL rows with ``id`` and
    ``answers`` (and optionally ``answer_type``), or from the official VQA annotation file (``annotations`` with
    ``question_id``, ``answers`` and ``answer_type``) known by question id and, given the official questions
    file, by (image id, question)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix.lower() == ".jsonl":
        if questions_path is not None:
            raise EvaluationInputError(
                f"a questions file ({questions_path}) goes with the official annotation file, not with {path}"
            )
        references = {}
        for number, row in enumerate(read_jsonl(path), start=1):
            if "id" not in row or "answers" not in row:
                raise EvaluationInputError(
                    f"{path} line {number} has no '{'id' if 'id' not in row else 'answers'}'; "
                    "expected rows with 'id' and 'answers' (the human answers)"
                )
            key = str(row["id"])
            if key in references:
                raise EvaluationInputError(f"{path} has the id {key} twice")
            references[key] = {"answers": _answers(path, key, row["answers"]), "answer_type": row.get("answer_type")}
        if not references:
            raise EvaluationInputError(f"{path} has no references")
        return references, {key: key for key in references}
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise EvaluationInputError(
            f"{path} is not a VQA annotation file (an object with 'annotations'), "
            "nor JSON lines (.jsonl) with 'id' and 'answers'"
        )
    references, aliases = {}, {}
    for annotation in data["annotations"]:
        if "question_id" not in annotation or "answers" not in annotation:
            raise EvaluationInputError(f"{path}: an annotation lacks 'question_id' or 'answers'")
        key = str(annotation["question_id"])
        if key in references:
            raise EvaluationInputError(f"{path} has the question id {key} twice")
        references[key] = {
            "answers": _answers(path, key, annotation["answers"]),
            "answer_type": annotation.get("answer_type"),
        }
        aliases[key] = key
    if questions_path is not None:
        aliases.update(_question_aliases(Path(questions_path), references))
    return references, aliases


def _answers(path: Path, key: str, answers: Any) -> list[str]:
    """Human answers as texts: plain strings, or the official ``{"answer": ...}`` objects."""
    if isinstance(answers, list):
        texts = [a.get("answer") if isinstance(a, dict) else a for a in answers]
        if texts and all(isinstance(t, str) for t in texts):
            return texts
    raise EvaluationInputError(f"{path}: the answers of {key} must be a non-empty list of texts, got {answers!r}")


def question_alias(image_id: Any, question: str) -> str:
    """The name a question goes by when a row says only its image and its question text."""
    return f"{int(image_id)}\t{' '.join(question.lower().split())}"


def _question_aliases(path: Path, references: dict[str, Any]) -> dict[str, str]:
    data = read_json(path) if path.is_file() else None
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise EvaluationInputError(f"{path} is not a VQA questions file (an object with 'questions')")
    aliases = {}
    for question in data["questions"]:
        key = str(question.get("question_id"))
        if key in references and "image_id" in question and isinstance(question.get("question"), str):
            aliases[question_alias(question["image_id"], question["question"])] = key
    return aliases


def evaluate_vqa(
    predictions_path: str | os.PathLike,
    references_path: str | os.PathLike,
    questions_path: str | os.PathLike | None = None,
    warn: Callable[[str], None] = to_stderr,
) -> dict[str, Any]:
    """``{"accuracy": percent, "by_answer_type": {type: percent}}`` of an ask job's output (rows with ``id`` and
    ``answer``; the ids are question ids, or - with ``questions_path`` - images whose ``question`` column names the
    question). ``by_answer_type`` is there when the references give answer types. Failed rows are reported
    through ``warn`` and not scored."""
    predictions = read_predictions(predictions_path, "answer", "ask")
    references, aliases = read_vqa_references(references_path, questions_path)
    names = {}  # a prediction's name for pairing: its id (a question id), else its image and question
    for name in predictions.ids:
        names[name] = name
        question, image = predictions.rows[name].get("question"), _image_number(name)
        if any(c in aliases for c in id_candidates(name, numbers=False)) or image is None:
            continue
        if isinstance(question, str) and question_alias(image, question) in aliases:
            names[name] = question_alias(image, question)
    # A file name's number is an image id, never a question id: pairing by it is left to the question aliases.
    paired = pair(names.values(), aliases, references, predictions_path, references_path, numbers=False)
    report_failed(predictions, warn)
    if not predictions.values:
        raise EvaluationInputError(f"every prediction in {predictions_path} failed: there is no answer to score")
    scores: list[float] = []
    by_type: dict[str, list[float]] = {}
    for name, answer in predictions.values.items():
        reference = references[paired[names[name]]]
        score = answer_accuracy(answer, reference["answers"])
        scores.append(score)
        if reference["answer_type"] is not None:
            by_type.setdefault(reference["answer_type"], []).append(score)
    result: dict[str, Any] = {"accuracy": 100 * sum(scores) / len(scores)}
    if by_type:
        result["by_answer_type"] = {kind: 100 * sum(s) / len(s) for kind, s in sorted(by_type.items())}
    return result


def _image_number(name: str) -> str | None:
    """The number a row id's file name ends in (``COCO_val2014_000000391895.jpg`` -> 391895), if any."""
    match = re.search(r"(\d+)$", Path(re.split(r"[/\\:]", name)[-1]).stem)
    return match.group(1) if match else None
