"""Fixtures for the metric tests: a seeded corpus of realistic captions (5 references and a candidate per image)."""

from __future__ import annotations

import random
import shutil
import threading

import pytest

METEOR_TEST = "test_meteor_matches_pycocoevalcap"

SUBJECTS = [
    ("man", "men"), ("woman", "women"), ("dog", "dogs"), ("cat", "cats"), ("boy", "boys"), ("girl", "girls"),
    ("horse", "horses"), ("bird", "birds"), ("giraffe", "giraffes"), ("elephant", "elephants"),
    ("skateboarder", "skateboarders"), ("child", "children"), ("surfer", "surfers"), ("zebra", "zebras"),
]  # fmt: skip
COLOURS = ["black", "white", "brown", "red", "blue", "green", "yellow", "grey", "black-and-white", "orange"]
THINGS = ["frisbee", "pizza", "umbrella", "kite", "skateboard", "surfboard", "laptop", "banana", "hot dog", "ball"]
VERBS = [("holding", "holds"), ("riding", "rides"), ("eating", "eats"), ("carrying", "carries"), ("throwing", "throws")]
PLACES = [
    "on a beach", "in a field", "on the street", "next to a building", "in the kitchen", "on a sofa",
    "near the water", "at St. Mary's park", "in front of a 10-year-old car", "under a tree", "on a wooden table",
]  # fmt: skip
NUMBERS = ["two", "three", "several", "a group of", "2", "1,000"]


def caption(rng: random.Random, scene: dict) -> str:
    """One caption of ``scene``, in one of many phrasings, with the punctuation and clitics people write."""
    singular, plural = scene["subject"]
    colour, thing, (verb, verb_s), place = scene["colour"], scene["thing"], scene["verb"], scene["place"]
    if rng.random() < 0.25:  # describe a neighbouring scene: partial matches
        colour, place = rng.choice(COLOURS), rng.choice(PLACES)
    forms = [
        f"A {colour} {singular} {verb} a {thing} {place}.",
        f"a {singular} {verb} a {colour} {thing} {place}",
        f"The {singular}'s {thing} is {colour}.",
        f"{rng.choice(NUMBERS).capitalize()} {plural} {place}, {verb} {thing}s!",
        f"There's a {singular} that {verb_s} a {thing} {place}.",
        f'A {singular} {verb} a "{colour}" {thing}; it isn\'t {rng.choice(COLOURS)}.',
        f"A {singular} (and its {thing}) {place}...",
        f"{plural.capitalize()}' {thing}s {place} - they're {colour}.",
        f"Is that a {singular}? It can't be {verb} a {thing} {place}!",
        f"  A close-up of a {colour}  {thing} {place} ",
        f"A {singular} {verb} a {thing}: we'll see, I'm sure it's {colour}.",
        f"A {singular} cannot stop {verb} the {thing} -- {place}.",
    ]
    return rng.choice(forms)


def caption_corpus(images: int, seed: int = 0) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``images`` scenes: ({id: candidate caption}, {id: [5 reference captions]})."""
    rng = random.Random(seed)
    candidates, references = {}, {}
    for index in range(images):
        scene = {
            "subject": rng.choice(SUBJECTS),
            "colour": rng.choice(COLOURS),
            "thing": rng.choice(THINGS),
            "verb": rng.choice(VERBS),
            "place": rng.choice(PLACES),
        }
        key = f"photos/{index:012d}.jpg"
        references[key] = [caption(rng, scene) for _ in range(5)]
        candidates[key] = caption(rng, scene)
    return candidates, references


@pytest.fixture(scope="session")
def corpus() -> tuple[dict[str, str], dict[str, list[str]]]:
    """240 images: candidates and references (1440 captions)."""
    return caption_corpus(240)


def tokenized(corpus):
    """The corpus as pycocoevalcap's scorers take it ({id: ["tok tok ..."]}: gts, res) and as ours do (token lists)."""
    from blipkit.evaluate.tokenize import ptb_tokenize

    candidates, references = corpus
    res = {key: [" ".join(ptb_tokenize(text))] for key, text in candidates.items()}
    gts = {key: [" ".join(ptb_tokenize(text)) for text in texts] for key, texts in references.items()}
    ours = ([res[k][0].split() for k in res], [[r.split() for r in gts[k]] for k in res])
    return gts, res, ours


@pytest.fixture(scope="session", autouse=True)
def meteor_race(request, corpus):
    """When the METEOR test is selected and Java exists: our METEOR and pycocoevalcap's, started in threads as the
    session starts, so that their jars' ~15 s of loading overlaps the other tests. {"ours"|"pycocoevalcap": score}
    once ``join()``-ed."""
    if shutil.which("java") is None or not any(item.name == METEOR_TEST for item in request.session.items):
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    from blipkit.evaluate.meteor import meteor

    gts, res, _ = tokenized(corpus)
    keys = list(res)
    scores: dict[str, float] = {}
    threads = [
        threading.Thread(target=lambda: scores.update(ours=meteor([res[k][0] for k in keys], [gts[k] for k in keys]))),
        threading.Thread(target=lambda: scores.update(pycocoevalcap=Meteor().compute_score(gts, res)[0])),
    ]
    for thread in threads:
        thread.start()

    def join() -> dict[str, float]:
        for thread in threads:
            thread.join()
        return scores

    return join
