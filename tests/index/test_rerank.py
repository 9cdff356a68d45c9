"""Re-ranking and evaluation follow BLIP's formula - ITM match logit + ITC cosine - computed here straight from
the retrieval models' own forward outputs (BLIP with [ENC] first, as BLIP's evaluation feeds ITM)."""

from __future__ import annotations

import json

import pytest
import torch

import blipkit
from blipkit.evaluate.retrieval import read_annotations, recall, score_matrices
from blipkit.index.index import Index
from blipkit.index.matching import load_matcher
from blipkit.tasks import RETRIEVAL
from tests.conftest import IMAGES

QUERY = "a cup of coffee on a table"


def pair_scores(model_dir, family, images, texts):
    """(images, texts) ITM match logits + ITC cosines from the model's forward outputs, an image's texts at once."""
    options = {"use_enc_token": True} if family == "blip" else {}
    model = getattr(blipkit, RETRIEVAL[family]).from_pretrained(model_dir, **options)
    processor = blipkit.AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "right"
    rows = []
    with torch.no_grad():
        tokens = processor.tokenizer(texts, padding=True, return_tensors="pt")
        for image in images:
            pixel_values = processor.image_processor(str(image))["pixel_values"].expand(len(texts), -1, -1, -1)
            pairs = {"pixel_values": pixel_values, **tokens}
            if family == "blip":
                logits = model(**pairs).itm_score[:, 1]
                cosines = model(**pairs, use_itm_head=False).itm_score.diagonal()
            else:
                logits = model(**pairs, use_image_text_matching_head=True).logits_per_image[:, 1]
                cosines = model(**pairs).logits_per_image.diagonal()
            rows.append(logits + cosines)
    return torch.stack(rows)


@pytest.mark.parametrize("family", ["blip", "blip-2"])
def test_text_to_images_rerank_follows_the_formula(retrieval_models, photos, family):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models[family]))
    hits = index.search(text=QUERY, k=4, rerank=3)
    itc_order = [h["id"] for h in index.search(text=QUERY, k=3)]
    expected = pair_scores(retrieval_models[family], family, itc_order, [QUERY])[:, 0]
    order = expected.argsort(descending=True).tolist()
    assert [h["id"] for h in hits[:3]] == [itc_order[i] for i in order]
    torch.testing.assert_close(torch.tensor([h["score"] for h in hits[:3]]), expected[order], atol=1e-4, rtol=1e-4)
    assert all(0 < h["itm"] < 1 for h in hits[:3]) and hits[3]["itm"] is None  # the 4th is outside the re-ranked 3


def test_image_to_texts_rerank_follows_the_formula(retrieval_models, tmp_path):
    texts = ["a cat on a sofa", "a rocket launch", "a cup of coffee", "an astronaut"]
    (tmp_path / "captions.txt").write_text("\n".join(texts))
    index = Index.create(tmp_path / "texts", retrieval_models["blip"], kind="texts")
    index.add_texts(str(tmp_path / "captions.txt"))
    hits = index.search(image=str(IMAGES[0]), k=4, rerank=4)
    expected = pair_scores(retrieval_models["blip"], "blip", [IMAGES[0]], texts)[0]
    order = expected.argsort(descending=True).tolist()
    assert [h["text"] for h in hits] == [texts[i] for i in order]
    torch.testing.assert_close(torch.tensor([h["score"] for h in hits]), expected[order], atol=1e-4, rtol=1e-4)


def test_rerank_of_images_by_an_image_is_refused(retrieval_models, photos):
    index = Index.build(str(photos), photos.parent / "index", model=str(retrieval_models["blip"]))
    with pytest.raises(ValueError, match="image query over an index of images"):
        index.search(image=str(IMAGES[0]), rerank=2)


@pytest.mark.parametrize("family", ["blip", "blip-2"])
def test_evaluation_follows_blips_procedure(retrieval_models, tmp_path, family):
    captions = [["A cat, asleep!", "a cat on a sofa"], ["a rocket"], ["coffee:  a cup", "a drink"], ["an astronaut"]]
    entries = [{"image": path.name, "caption": c} for path, c in zip(IMAGES, captions, strict=True)]
    (tmp_path / "test.json").write_text(json.dumps(entries))
    data = read_annotations(tmp_path / "test.json", IMAGES[0].parent)
    assert data.texts[0] == "a cat, asleep" and data.texts[3] == "coffee a cup"  # BLIP's pre_caption
    loaded = load_matcher(retrieval_models[family])
    i2t, t2i = score_matrices(loaded, data, k_test=3)

    full = pair_scores(retrieval_models[family], family, data.images, data.texts)  # every pair
    cosine = torch.stack([_cosines(loaded, image, data.texts) for image in data.images])
    for scores, cosines in ((i2t, cosine), (t2i.t(), cosine)):
        by_row = scores is i2t
        expected = torch.full_like(full, -100.0)
        for r in range(full.shape[0] if by_row else full.shape[1]):
            top = (cosines[r] if by_row else cosines[:, r]).topk(3).indices
            if by_row:
                expected[r, top] = full[r, top]
            else:
                expected[top, r] = full[top, r]
        torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)
    result = recall(i2t, t2i, data)
    direct = _recall(full, data)
    assert result["txt_r1"] == pytest.approx(direct["txt_r1"]) and result["img_r1"] == pytest.approx(direct["img_r1"])


def _cosines(loaded, image, texts):
    with torch.no_grad():
        image_embeds = loaded.model.get_image_features(loaded.pixel_values(image))[0]
        text_embeds = loaded.model.get_text_features(**loaded.tokens(texts))
    scores = text_embeds @ image_embeds.t()
    return scores.amax(dim=1) if scores.dim() == 2 else scores


def _recall(scores, data):
    """R@1 both ways from a full score matrix (k_test covering most pairs makes the top-1 the same here)."""
    text_hits = [int(scores[i].argmax()) in texts for i, texts in enumerate(data.image_texts)]
    image_hits = [int(scores[:, j].argmax()) == i for j, i in enumerate(data.text_image)]
    return {"txt_r1": 100 * sum(text_hits) / len(text_hits), "img_r1": 100 * sum(image_hits) / len(image_hits)}
