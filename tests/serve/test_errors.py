"""Every error is JSON ``{"error": {"type", "message"}}`` with its status: 400 413 415 422 404 405 429 503 504."""

from __future__ import annotations

import asyncio

import pytest

from blipkit.serve.limits import Limits
from tests.conftest import IMAGES


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    return body["error"]


def post(path: str, body: dict) -> tuple:
    return ("POST", path, {"json": body})


def test_bodies_that_cannot_be_read(send, images):
    not_json, form, not_an_image, bad_base64 = send(
        ("POST", "/v1/caption", {"content": b'{"images": [', "headers": {"content-type": "application/json"}}),
        ("POST", "/v1/caption", {"data": {"images": "x"}}),  # urlencoded, as curl -d sends without -H
        ("POST", "/v1/caption", {"files": [("images", ("notes.txt", b"not an image at all"))]}),
        post("/v1/caption", {"images": ["not base64!"]}),
    )
    assert error(not_json, 400)["type"] == "invalid_json"
    assert "multipart/form-data" in error(form, 415)["message"]
    assert error(not_an_image, 415)["type"] == "unsupported_media_type"
    assert error(bad_base64, 422)["type"] == "invalid_image"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "images: Field required"),
        ({"images": []}, "images: List should have at least 1 item"),
        ({"images": ["x"], "num_beams": 0}, "num_beams"),
        ({"images": ["x"], "temperature": "hot"}, "temperature"),
        ({"images": ["x"], "max_new_tokens": 100_000}, "max_new_tokens"),
        ({"images": ["x"], "beams": 3}, "beams: Extra inputs are not permitted"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)
def test_invalid_settings_name_the_field(send, body, says):
    (response,) = send(post("/v1/caption", body))
    assert says in error(response, 422)["message"]


def test_what_the_model_refuses_fails_that_request_only(send, images):
    refused, fine = send(
        post("/v1/caption", {"images": images[:1], "num_return_sequences": 2}),  # greedy has one sequence
        post("/v1/caption", {"images": images[:1]}),
    )
    assert "greedy search returns one sequence" in error(refused, 422)["message"]
    assert fine.status_code == 200


def test_questions_must_pair_with_images_and_texts_must_not_be_empty(send, images):
    unpaired, both, empty = send(
        post("/v1/vqa", {"images": images[:2], "questions": ["one?"]}),
        post("/v1/vqa", {"images": images[:1], "question": "a?", "questions": ["b?"]}),
        post("/v1/match", {"image": images[0], "texts": ["a cat", " "]}),
    )
    assert "got 2 images but 1 questions" in error(unpaired, 422)["message"]
    assert "give question" in error(both, 422)["message"]
    assert error(empty, 422)["type"] == "invalid_text"


def test_models_and_routes_that_are_not_there(send, images, model_dirs):
    unknown, not_served, no_path, wrong_method = send(
        post("/v1/caption", {"model": "Salesforce/nope", "images": images[:1]}),
        post("/v1/match", {"model": str(model_dirs["caption"]), "image": images[0], "texts": ["a"]}),
        ("GET", "/v2/caption", {}),
        ("GET", "/v1/caption", {}),
    )
    assert "no model 'Salesforce/nope' is loaded" in error(unknown, 404)["message"]
    assert "does not serve /v1/match; it serves /v1/caption" in error(not_served, 404)["message"]
    assert error(no_path, 404)["type"] == "not_found"
    assert error(wrong_method, 405)["type"] == "method_not_allowed"


def test_a_route_no_loaded_model_serves(send, make_service, models, images):
    from blipkit.serve.models import Models
    from blipkit.serve.service import Service

    captions_only = Service(Models([models.by_name[next(iter(models.by_name))]]), Limits())
    (response,) = send(post("/v1/embeddings", {"texts": ["a"]}), service=captions_only)
    assert "no loaded model serves /v1/embeddings" in error(response, 404)["message"]


def test_limits_are_applied(send, make_service, images):
    service = make_service(Limits(max_images=2, max_body_bytes=len(images[0]) * 4, max_text_chars=10))
    too_many, too_big, too_long = send(
        post("/v1/caption", {"images": images[:1] * 3}),
        post("/v1/caption", {"images": images[:1] * 5}),
        post("/v1/caption", {"images": images[:1], "prompt": "a picture of many things"}),
        service=service,
    )
    assert "--max-images" in error(too_many, 413)["message"]
    assert "--max-body-bytes" in error(too_big, 413)["message"]
    assert "--max-text-chars" in error(too_long, 422)["message"]
    # Counted by route, the body refused before the router read it included.
    assert 'blipkit_requests_total{route="/v1/caption",status="413"} 2' in service.metrics.render()


def test_chat_messages_need_one_image(send, images, model_dirs):
    def chat(model, content):
        return post("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": content}]})

    url = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{images[0]}"}}
    no_image, two_images, no_question, no_user = send(
        chat(str(model_dirs["caption"]), "describe it"),
        chat(str(model_dirs["caption"]), [url, url]),
        chat(str(model_dirs["vqa"]), [url]),
        post("/v1/chat/completions", {"messages": [{"role": "system", "content": "be brief"}]}),
    )
    assert "needs one image_url part, got 0" in error(no_image, 400)["message"]
    assert "got 2" in error(two_images, 400)["message"]
    assert "answers questions: add a text part" in error(no_question, 422)["message"]
    assert "no user message" in error(no_user, 400)["message"]


def test_draining_answers_503_but_health_and_metrics(send, make_service, images):
    service = make_service()
    service.draining = True
    caption, ready, health, metrics = send(
        post("/v1/caption", {"images": images[:1]}), ("GET", "/ready", {}), ("GET", "/health", {}),
        ("GET", "/metrics", {}), service=service,
    )  # fmt: skip
    assert error(caption, 503)["type"] == "draining"
    assert error(ready, 503)["type"] == "draining"
    assert health.status_code == metrics.status_code == 200


def test_a_full_queue_answers_429_at_once_with_retry_after(make_service, client, gate, images):
    service = make_service(max_batch_size=1, max_queue=1, run=gate)
    body = {"json": {"images": images[:1], "max_new_tokens": 3}}

    async def main():
        async with client(service) as http:
            running = asyncio.ensure_future(http.post("/v1/caption", **body))
            await asyncio.to_thread(gate.started.wait, 60)
            queued = asyncio.ensure_future(http.post("/v1/caption", **body))
            while service.batcher.depth < 1:  # decoded in a thread, then queued
                await asyncio.sleep(0.001)
            refused = await http.post("/v1/caption", **body)
            gate.release.set()
            return refused, await running, await queued

    refused, running, queued = asyncio.run(main())
    assert error(refused, 429)["type"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert running.status_code == queued.status_code == 200
    assert 'blipkit_requests_total{route="/v1/caption",status="429"} 1' in service.metrics.render()


def test_past_its_timeout_a_request_gets_504_and_leaves_the_queue(make_service, client, gate, images):
    service = make_service(max_batch_size=1, timeout_s=0.3, run=gate)
    body = {"json": {"images": images[:1], "max_new_tokens": 3}}

    async def main():
        async with client(service) as http:
            running = asyncio.ensure_future(http.post("/v1/caption", **body))
            await asyncio.to_thread(gate.started.wait, 60)
            queued = await http.post("/v1/caption", **body)  # waits behind the held batch, never runs
            late = await running
            depth = service.batcher.depth
            gate.release.set()
            while not service.batcher.idle:
                await asyncio.sleep(0.001)
            return late, queued, depth, await http.post("/v1/caption", **body)

    late, queued, depth, after = asyncio.run(main())
    assert error(late, 504)["type"] == error(queued, 504)["type"] == "timeout"
    assert depth == 0
    assert after.status_code == 200
    assert len(gate.calls) == 2  # the held request's and the one after: the timed-out queued one never ran


def test_uploads_are_read_as_images_only(send, images):
    files = [("images", ("photo.jpg", IMAGES[0].read_bytes())), ("images", ("x.png", b"\x89PNG\r\n\x1a\n" + b"0" * 9))]
    (response,) = send(("POST", "/v1/caption", {"files": files}))
    assert error(response, 422)["type"] == "invalid_image"
