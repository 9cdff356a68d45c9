"""The pure-Python COCO PTB tokenization: expected tokens on tricky strings, and pycocoevalcap's Java tokenizer."""

from __future__ import annotations

import shutil

import pytest

from blipkit.evaluate.tokenize import ptb_tokenize, tokenize_captions

# What pycocoevalcap's PTBTokenizer (CoreNLP 3.4.1 in Java, then its punctuation filter) returns for each string.
EXPECTED = {
    "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
    "A man's dog can't swim, isn't it?": "a man 's dog ca n't swim is n't it",
    "I'm sure they're gonna win; we'll see & cannot wait!": "i 'm sure they 're gon na win we 'll see & can not wait",
    'The colour of the theatre\'s "big" sign (red/blue) is grey.': (
        "the colour of the theatre 's big sign -lrb- red/blue -rrb- is grey"
    ),
    "Two dogs' toys -- and a cat... near St. Louis, U.S.A.": "two dogs toys and a cat near st. louis u.s.a.",
    "A 3.5-inch black-and-white photo of 1/2 a pizza at 5 p.m. for $10.": (
        "a 3.5-inch black-and-white photo of 1/2 a pizza at 5 p.m. for $ 10"
    ),
    "She said 'hello' to Mr. Smith's kids {ok} [fine] ... end.": (
        "she said hello to mr. smith 's kids -lcb- ok -rcb- -lsb- fine -rsb- end"
    ),
    "a woman wearing a hat.Another sentence": "a woman wearing a hat.another sentence",
    "It's 'cause you'd've done it. Don't!": "it 's 'cause you 'd 've done it do n't",
    "1,000 people at 3:30 on 24/7 o'clock rock'n'roll ma'am james' 90's '90s 'em 'tis": (
        "1,000 people at 3:30 on 24/7 o'clock rock 'n' roll ma'am james 90 's '90s 'em 't is"
    ),
    "-dog dog- wow.. ?! !! don't. e.g. TV's no.1 #1 1st w/ dog--cat dog - cat x-ray's": (
        "dog dog wow ?! !! do n't e.g. tv 's no. 1 # 1 1st w / dog cat dog cat x-ray 's"
    ),
    "gimme gotta lemme wanna y'all won't ain't couldn't": "gim me got ta lem me wan na y' all wo n't ai n't could n't",
    "dog,cat 1,5 dog's. dogs'. hot-dog. 3d 10-year-old 5-10 1.5m 10ft. 100%.": (
        "dog cat 1,5 dog 's dogs hot-dog 3d 10-year-old 5-10 1.5 m 10ft 100 %"
    ),
    "A FIRE HYDRANT ON A SIDEWALK  NEXT TO A STREET": "a fire hydrant on a sidewalk next to a street",
    "dog’s “quoted” ‘single’ dog—cat dog–cat …": "dog 's quoted single dog cat dog cat",
    "AT&T a&b £5 under_score __init__ @home #tag a@b.com http://x.com/y": (
        "at&t a & b # 5 under_score __ init __ @home #tag a@b.com http://x.com/y"
    ),
    "a cat 😀 on a mat": "a cat on a mat",  # emoji are untokenizable to the Java lexer: deleted
    "a. Mr. Dec. Mass. mass. no. 5 fig. 3 approx. 5": "a mr. dec. mass. mass no. 5 fig. 3 approx 5",
    "The letter x. It is big, cannot's 5'10 '10-year-old": "the letter x it is big cannot 's 5 '10 10-year-old",
    "": "",
    " . , ; ": "",
}


@pytest.mark.parametrize("text", list(EXPECTED))
def test_tokens(text):
    assert " ".join(ptb_tokenize(text)) == EXPECTED[text]


def test_tokenize_captions_keeps_ids_and_order():
    assert tokenize_captions({"x": ["A dog.", "Two cats!"], 7: ["It's red."]}) == {
        "x": ["a dog", "two cats"],
        7: ["it 's red"],
    }


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java: pycocoevalcap's PTBTokenizer runs CoreNLP in Java")
def test_same_tokens_as_pycocoevalcap_java(corpus):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    candidates, references = corpus
    texts = [*EXPECTED, *candidates.values(), *(c for refs in references.values() for c in refs)]
    java = PTBTokenizer().tokenize({i: [{"caption": text}] for i, text in enumerate(texts)})
    ours = {i: [" ".join(ptb_tokenize(text))] for i, text in enumerate(texts)}
    assert len(texts) > 1400
    assert ours == java
