"""pipeline(): every task, every input kind, batching that does not change results."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import blipkit
from tests.builders.configs import SAME_WIDTH
from tests.builders.models import boosted_reference
from tests.conftest import IMAGES
from tests.reference import save_reference


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("caption", "vqa", "itm")}
    boosted_reference("BlipForConditionalGeneration", dirs["caption"])
    boosted_reference("BlipForQuestionAnswering", dirs["vqa"], **SAME_WIDTH)
    save_reference("BlipForImageTextRetrieval", dirs["itm"])
    return dirs


def test_image_to_text_matches_model_generate_for_every_input_kind(model_dirs):
    pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"], batch_size=3)
    expected_ids = pipe.model.generate(**pipe.processor(images=[str(p) for p in IMAGES]), max_new_tokens=8)
    expected = [t.strip() for t in pipe.processor.batch_decode(expected_ids, skip_special_tokens=True)]
    kinds = [str(IMAGES[0]), Image.open(IMAGES[1]), IMAGES[2].read_bytes(), np.asarray(Image.open(IMAGES[3]))]
    assert [r[0]["generated_text"] for r in pipe(kinds, max_new_tokens=8)] == expected
    assert pipe(IMAGES[0], max_new_tokens=8) == [{"generated_text": expected[0]}]


def test_image_to_text_prompt_and_beams(model_dirs):
    pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"])
    results = pipe(IMAGES[:2], prompt="a picture of", num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert [len(r) for r in results] == [2, 2]
    assert all(r["generated_text"].startswith("a picture of") for rows in results for r in rows)


def test_vqa_answers_do_not_depend_on_batching(model_dirs):
    pipe = blipkit.pipeline("visual-question-answering", model=model_dirs["vqa"], batch_size=4)
    questions = ["how many cats are on the sofa?", "what", "is this a photo of an astronaut?", "color?"]
    batched = pipe(image=[str(p) for p in IMAGES], question=questions, max_new_tokens=6)
    one_by_one = [pipe(image=str(p), question=q, max_new_tokens=6)[0] for p, q in zip(IMAGES, questions, strict=True)]
    assert batched == [[row] for row in one_by_one]
    assert set(one_by_one[0]) == {"answer"}


def test_image_text_matching_scores_equal_the_model(model_dirs):
    pipe = blipkit.pipeline("image-text-matching", model=model_dirs["itm"], batch_size=2)
    texts = ["a cat on a blanket", "a rocket", "coffee in a cup"]
    rows = pipe(IMAGES[0], texts)
    inputs = pipe.processor(images=[str(IMAGES[0])] * 3, text=texts, padding=True)
    with torch.no_grad():
        expected_match = pipe.model(**inputs).itm_score.softmax(-1)[:, 1]
        expected_cosine = pipe.model(**inputs, use_itm_head=False).itm_score[0]
    assert [r["text"] for r in rows] == texts
    torch.testing.assert_close(torch.tensor([r["score"] for r in rows]), expected_match, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([r["similarity"] for r in rows]), expected_cosine, atol=1e-5, rtol=1e-4)


def test_zero_shot_classification_is_a_ranked_distribution(model_dirs):
    pipe = blipkit.pipeline("zero-shot-image-classification", model=model_dirs["itm"])
    buffer = io.BytesIO()
    Image.open(IMAGES[0]).save(buffer, format="PNG")
    rows = pipe(buffer.getvalue(), candidate_labels=["cat", "dog", "rocket"])
    scores = [r["score"] for r in rows]
    assert sorted(r["label"] for r in rows) == ["cat", "dog", "rocket"]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5


def test_pipeline_errors(model_dirs):
    with pytest.raises(ValueError, match="unknown task 'captioning'; choose one of"):
        blipkit.pipeline("captioning", model=model_dirs["caption"])
    pipe = blipkit.pipeline("visual-question-answering", model=model_dirs["vqa"])
    with pytest.raises(ValueError, match="got 2 images but 3 questions"):
        pipe(image=IMAGES[:2], question=["a", "b", "c"])
    with pytest.raises(ValueError, match="needs both image= and question="):
        pipe(image=IMAGES[0])


def test_images_by_url_from_a_local_server(model_dirs):
    """URLs are fetched (here from a server on loopback: nothing leaves the machine)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(IMAGES[0].parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{IMAGES[0].name}"
        pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"])
        assert pipe(url, max_new_tokens=6) == pipe(str(IMAGES[0]), max_new_tokens=6)
        with pytest.raises(blipkit.ImageError, match="cannot download image .*missing.jpg"):
            pipe(url.replace(IMAGES[0].name, "missing.jpg"))
    finally:
        server.shutdown()
