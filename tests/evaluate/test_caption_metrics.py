"""BLEU, ROUGE-L, CIDEr-D (and METEOR, where Java exists) against pycocoevalcap on the same tokenized captions."""

from __future__ import annotations

import math
import shutil

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from blipkit.evaluate.caption_metrics import bleu, cider_d, rouge_l
from blipkit.evaluate.captions import caption_scores
from blipkit.evaluate.meteor import MeteorUnavailable, find_meteor
from tests.evaluate.conftest import tokenized

TOLERANCE = 1e-4
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="no Java: METEOR is a Java jar")


def test_fixture_is_realistic(corpus):
    candidates, references = corpus
    assert len(candidates) >= 200 and all(len(refs) == 5 for refs in references.values())
    texts = [*candidates.values(), *(c for refs in references.values() for c in refs)]
    for mark in ("'s", "n't", "'re", ",", ".", "!", "?", ";", ":", "(", '"', "--", "..."):
        assert any(mark in text for text in texts), mark


def test_bleu_matches_pycocoevalcap(corpus):
    gts, res, (candidates, references) = tokenized(corpus)
    expected, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert bleu(candidates, references) == pytest.approx(expected, abs=TOLERANCE)
    assert 0.2 < expected[3] < expected[0] < 1  # a fixture that tells the n-gram orders apart


def test_rouge_l_matches_pycocoevalcap(corpus):
    gts, res, (candidates, references) = tokenized(corpus)
    expected, _ = Rouge().compute_score(gts, res)
    assert rouge_l(candidates, references) == pytest.approx(expected, abs=TOLERANCE)


def test_cider_d_matches_pycocoevalcap(corpus):
    gts, res, (candidates, references) = tokenized(corpus)
    expected, _ = Cider().compute_score(gts, res)
    assert cider_d(candidates, references) == pytest.approx(expected, abs=TOLERANCE)
    assert expected > 0.5


EDGES = {
    "empty candidate": {"a": ["", "a dog on a mat"], "b": ["two cats", "two cats on a sofa"]},
    "one word": {"a": ["dog", "dog"], "b": ["cat", "a cat"], "c": ["sofa", "a red sofa in a room"]},
    "no overlap": {"a": ["zebra stripes", "a dog on a mat"], "b": ["blue sky", "two cats on a sofa"]},
    "repeated words": {"a": ["dog dog dog dog", "a dog and a dog"], "b": ["the the the", "the cat sat on the mat"]},
    "longer candidate": {
        "a": ["a very long caption about a dog on a mat in a room", "a dog on a mat"],
        "b": ["x", "y"],
    },
}


@pytest.mark.parametrize("case", list(EDGES))
def test_edge_cases_match_pycocoevalcap(case):
    # Each image: its candidate, then its references (several images, so CIDEr's document frequencies vary).
    rows = EDGES[case]
    res = {k: [v[0]] for k, v in rows.items()}
    gts = {k: v[1:] * 2 for k, v in rows.items()}  # two references each
    candidates = [res[k][0].split() for k in rows]
    references = [[r.split() for r in gts[k]] for k in rows]
    assert bleu(candidates, references) == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0], abs=1e-9)
    assert rouge_l(candidates, references) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert cider_d(candidates, references) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)


def test_bleu_by_hand():
    # Candidate "the cat sat" vs reference "the cat sat down": precisions 3/3, 2/2, 1/1; 3 words against 4, so
    # every BLEU-n is the brevity penalty exp(1 - 4/3).
    scores = bleu([["the", "cat", "sat"]], [[["the", "cat", "sat", "down"]]], n=3)
    assert scores == pytest.approx([math.exp(1 - 4 / 3)] * 3, abs=1e-9)
    # Clipping: "the the the" against "the cat": one "the" counts, 1/3.
    assert bleu([["the", "the", "the"]], [[["the", "cat"]]], n=1)[0] == pytest.approx(1 / 3, abs=1e-9)


def test_rouge_l_by_hand():
    # LCS of "a b c d" and "a c d e" is "a c d": precision 3/4, recall 3/4, so F = 3/4 whatever beta.
    assert rouge_l([["a", "b", "c", "d"]], [[["a", "c", "d", "e"]]]) == pytest.approx(0.75)


def test_caption_scores_keys_without_meteor(corpus):
    candidates, references = corpus
    scores = caption_scores(candidates, references, use_meteor=False)
    assert list(scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]


def test_missing_java_leaves_meteor_out(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    messages = []
    scores = caption_scores({"a": "a dog"}, {"a": ["a dog", "the dog"]}, warn=messages.append)
    assert "METEOR" not in scores and "CIDEr" in scores
    assert messages == [
        "blipkit: no METEOR score: METEOR needs Java (e.g. apt-get install default-jre-headless); none on PATH"
    ]
    with pytest.raises(MeteorUnavailable):
        caption_scores({"a": "a dog"}, {"a": ["a dog"]}, use_meteor=True)


def test_meteor_jar_variable_must_name_a_file(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/java")
    monkeypatch.setenv("BLIPKIT_METEOR_JAR", str(tmp_path / "nowhere.jar"))
    with pytest.raises(MeteorUnavailable, match=r"^\$BLIPKIT_METEOR_JAR is .*nowhere.jar, which is not a file$"):
        find_meteor()


@needs_java
def test_meteor_matches_pycocoevalcap(meteor_race):
    scores = meteor_race()  # both computed on the corpus's tokenized captions, in threads (see conftest)
    assert scores["ours"] == pytest.approx(scores["pycocoevalcap"], abs=TOLERANCE)
    assert 0.2 < scores["ours"] < 1
