"""blipkit.Index on tiny checkpoints: exact search equals brute force over the model's own embeddings; adds embed
only what is new; removes show at once; failures are reported; models are never mixed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

import blipkit
from blipkit.index.index import Index
from blipkit.index.manifest import IndexRefused
from blipkit.jobs.workers import Worker
from blipkit.tasks import RETRIEVAL
from tests.conftest import IMAGES

QUERY = "a cup of coffee on a table"


def brute_force(model_dir, family, paths, text):
    """Every image's ITC similarity with ``text``, straight from the retrieval model."""
    model = getattr(blipkit, RETRIEVAL[family]).from_pretrained(model_dir)
    processor = blipkit.AutoProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        images = model.get_image_features(processor.image_processor([str(p) for p in paths])["pixel_values"])
        tokens = processor.encode_text([text], with_images=True, padding=True)
        texts = model.get_text_features(**tokens)[0]
    scores = images @ texts
    return scores.amax(dim=1) if scores.dim() == 2 else scores  # BLIP-2: the best query


@pytest.mark.parametrize("family", ["blip", "blip-2"])
def test_exact_top_k_equals_brute_force(retrieval_models, photos, family):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models[family]))
    paths = sorted(photos.glob("*.*"))
    paths = [p for p in paths if p.name != "broken.jpg"]
    expected = brute_force(retrieval_models[family], family, paths, QUERY)
    order = expected.argsort(descending=True)[:3].tolist()
    hits = index.search(text=QUERY, k=3)
    assert [h["id"] for h in hits] == [str(paths[i]) for i in order]
    torch.testing.assert_close(torch.tensor([h["itc"] for h in hits]), expected[order], atol=1e-5, rtol=1e-5)
    assert all(h["score"] == h["itc"] and h["itm"] is None for h in hits)


def test_corrupt_image_is_reported_and_not_indexed(retrieval_models, photos):
    index = Index.create(photos.parent / "index", retrieval_models["blip"])
    summary = index.add(str(photos))
    assert (summary.embedded, summary.failed) == (4, 1)
    assert summary.failures[0]["id"] == str(photos / "broken.jpg")
    assert "truncated or corrupt" in summary.failures[0]["error"]
    written = [json.loads(line) for line in (index.directory / "failures.jsonl").read_text().splitlines()]
    assert written == summary.failures
    assert index.info()["count"] == 4 and index.info()["failed_last_add"] == 1


def test_add_embeds_only_new_content(retrieval_models, photos, monkeypatch):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    prepared = []
    original = Worker.prepare
    monkeypatch.setattr(Worker, "prepare", lambda self, items: prepared.extend(items) or original(self, items))
    Image.open(IMAGES[0]).rotate(90).save(photos / "new.png")
    summary = index.add(str(photos))
    # broken.jpg is tried again (it might have been fixed); of the images, only the new one is embedded
    assert [item.id for item in prepared] == [str(photos / "broken.jpg"), str(photos / "new.png")]
    assert (summary.embedded, summary.skipped, summary.duplicates) == (1, 4, 0)
    assert index.info()["count"] == 5


def test_renamed_and_copied_files_are_not_embedded_again(retrieval_models, photos):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    (photos / "rocket.jpg").rename(photos / "renamed.jpg")
    shutil.copy(photos / "coffee.jpg", photos / "copy.jpg")
    summary = index.add(str(photos))
    assert (summary.embedded, summary.duplicates) == (0, 2)
    paths = {row["path"] for row in index.store.rows(["path"])}
    assert str(photos / "renamed.jpg") in paths and str(photos / "rocket.jpg") not in paths
    assert str(photos / "copy.jpg") not in paths and index.info()["count"] == 4


def test_remove_is_visible_at_once(retrieval_models, photos):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    best = index.search(text=QUERY, k=1)[0]["id"]
    assert index.remove([best, "no-such-id"]) == ["no-such-id"]
    assert best not in [h["id"] for h in index.search(text=QUERY, k=10)]
    assert best not in [h["id"] for h in Index.open(index.directory).search(text=QUERY, k=10)]
    assert index.info()["count"] == 3


def test_another_model_is_refused_naming_both(retrieval_models, photos):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    with pytest.raises(IndexRefused, match="built with .*blip; adding with .*other is refused"):
        index.add(str(photos), model=str(retrieval_models["other"]))
    with pytest.raises(IndexRefused, match="built with .*blip; adding with .*other"):
        Index.build(str(photos), index.directory, model=str(retrieval_models["other"]))
    assert Index.build(str(photos), index.directory).manifest.model == str(retrieval_models["blip"])  # resumes
    with pytest.raises(IndexRefused, match="index of images; it cannot take texts"):
        index.add_texts(str(photos / "captions.txt"))


@pytest.mark.parametrize("family", ["blip", "blip-2"])
def test_image_to_images(retrieval_models, photos, family):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models[family]))
    hits = index.search(image=str(IMAGES[2]), k=4)
    assert hits[0]["id"] == str(photos / IMAGES[2].name)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)  # the same image
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_where_filters_rows(retrieval_models, photos):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    hits = index.search(text=QUERY, k=10, where="path LIKE '%.png'")
    assert [h["id"] for h in hits] == [str(photos / "chelsea.png")]


def test_dedup_groups_near_duplicates(retrieval_models, photos):
    Image.open(photos / "coffee.jpg").save(photos / "coffee-again.png")  # other bytes, the same pixels
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    groups = index.dedup(threshold=0.999)
    assert [[row["path"] for row in group] for group in groups] == [
        [str(photos / "coffee-again.png"), str(photos / "coffee.jpg")]
    ]


def test_image_to_texts_over_a_text_index(retrieval_models, tmp_path):
    captions = ["a cat on a sofa", "a rocket launch", "a cup of coffee", "", "an astronaut"]
    (tmp_path / "captions.txt").write_text("\n".join(captions + ["a cat on a sofa"]) + "\n")
    index = Index.create(tmp_path / "texts", retrieval_models["blip"], kind="texts")
    summary = index.add_texts(str(tmp_path / "captions.txt"))
    assert (summary.embedded, summary.duplicates) == (4, 1)  # the blank line is no text; the repeat is kept once
    model = blipkit.BlipForImageTextRetrieval.from_pretrained(retrieval_models["blip"])
    processor = blipkit.BlipProcessor.from_pretrained(retrieval_models["blip"])
    texts = [c for c in captions if c]
    with torch.no_grad():
        image = model.get_image_features(processor.image_processor(str(IMAGES[1]))["pixel_values"])[0]
        expected = model.get_text_features(**processor.tokenizer(texts, padding=True, return_tensors="pt")) @ image
    hits = index.search(image=str(IMAGES[1]), k=4)
    assert [h["text"] for h in hits] == [texts[i] for i in expected.argsort(descending=True).tolist()]
    torch.testing.assert_close(torch.tensor([h["itc"] for h in hits]), expected.sort(descending=True).values)


def test_approximate_search_finds_what_exact_search_finds(retrieval_models, photos, monkeypatch):
    monkeypatch.setattr("blipkit.index.index.ANN_MIN_ROWS", 2)  # as a collection past 200k rows is searched
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    assert index.info()["ann"]
    approximate = index.search(text=QUERY, k=3)
    monkeypatch.setattr("blipkit.index.index.ANN_MIN_ROWS", 10**9)
    assert approximate == index.search(text=QUERY, k=3)
