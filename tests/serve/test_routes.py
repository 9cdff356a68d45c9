"""Every route, in-process: each result is what pipeline() (or the task's run, for embeddings) gives for the same
inputs; images as base64, data: URLs or multipart uploads; health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import json

import pytest
import torch

import blipkit
from blipkit.tasks import TASKS, load
from tests.conftest import IMAGES

PATHS = [str(path) for path in IMAGES]
QUESTIONS = ["what is in the picture?", "how many?", "is this an astronaut?", "color?"]


def post(path: str, body: dict) -> tuple:
    return ("POST", path, {"json": body})


def chat_body(model: str, image: str, text: str | None = None, **settings) -> dict:
    content = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return {"model": model, "messages": [{"role": "user", "content": content}], **settings}


@pytest.fixture(scope="module")
def pipelines(model_dirs):
    """pipelines(task, name) -> pipeline() on the tiny model ``name``, loaded once per module."""
    loaded = {}

    def get(task: str, name: str):
        if (task, name) not in loaded:
            loaded[task, name] = blipkit.pipeline(task, model=model_dirs[name])
        return loaded[task, name]

    return get


@pytest.mark.parametrize("name", ["caption", "blip2-opt", "blip2-t5"])
@pytest.mark.parametrize(
    "settings",
    [{"max_new_tokens": 6}, {"prompt": "a picture of", "num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 5}],
)
def test_caption_equals_the_pipeline(send, images, model_dirs, pipelines, name, settings):
    (response,) = send(post("/v1/caption", {"model": str(model_dirs[name]), "images": images, **settings}))
    assert response.status_code == 200, response.text
    body = response.json()
    pipe_settings = dict(settings)
    expected = pipelines("image-to-text", name)(PATHS, **pipe_settings)
    assert body["model"] == str(model_dirs[name])
    assert [r["caption"] for r in body["results"]] == [rows[0]["generated_text"] for rows in expected]
    if settings.get("num_return_sequences"):
        assert [r["captions"] for r in body["results"]] == [[r["generated_text"] for r in rows] for rows in expected]


@pytest.mark.parametrize("name", ["vqa", "blip2-opt", "blip2-t5"])
def test_vqa_equals_the_pipeline(send, images, model_dirs, pipelines, name):
    body = {"model": str(model_dirs[name]), "images": images, "questions": QUESTIONS, "max_new_tokens": 5}
    one = {"model": str(model_dirs[name]), "images": images[:2], "question": QUESTIONS[0], "num_beams": 2}
    many, same = send(post("/v1/vqa", body), post("/v1/vqa", one))
    pipe = pipelines("visual-question-answering", name)
    expected = pipe(image=PATHS, question=QUESTIONS, max_new_tokens=5)
    answers = [{"question": q, "answer": rows[0]["answer"]} for q, rows in zip(QUESTIONS, expected, strict=True)]
    assert many.json()["results"] == answers
    expected = pipe(image=PATHS[:2], question=QUESTIONS[0], num_beams=2)
    assert [r["answer"] for r in same.json()["results"]] == [rows[0]["answer"] for rows in expected]


@pytest.mark.parametrize("name", ["itm", "blip2-itm"])
def test_match_equals_the_pipeline(send, make_service, images, model_dirs, name):
    texts = ["a cat on a blanket", "a rocket", "coffee"]
    body = {"model": str(model_dirs[name]), "image": images[1], "texts": texts}
    (response,) = send(post("/v1/match", body), service=make_service(max_batch_size=2))
    expected = blipkit.pipeline("image-text-matching", model=model_dirs[name], batch_size=2)(PATHS[1], texts)
    assert response.json()["results"] == [
        {"text": row["text"], "itm": row["score"], "itc": row["similarity"]} for row in expected
    ]


@pytest.mark.parametrize("name", ["itm", "blip2-itm"])
def test_embeddings_of_images_and_texts_in_one_space(send, images, model_dirs, name):
    texts = ["a cat on a blanket", "a rocket on its launch pad"]
    (response,) = send(post("/v1/embeddings", {"model": str(model_dirs[name]), "images": images, "texts": texts}))
    data = response.json()["data"]
    assert [(d["index"], d["input"]) for d in data] == list(enumerate(["image"] * 4 + ["text"] * 2))
    image_task = load(TASKS["image-embedding"], model_dirs[name])
    text_task = load(TASKS["text-embedding"], model_dirs[name])
    expected = image_task.run(image_task.pixel_values(PATHS), None) + text_task.run(None, texts)
    for got, want in zip(data, expected, strict=True):
        torch.testing.assert_close(torch.tensor(got["embedding"]), torch.tensor(want), rtol=0, atol=1e-6)
    image, text = data[0]["embedding"], data[-1]["embedding"]
    if name == "itm":  # one vector per image: unit length, comparable with a text's by dot product
        assert sum(x * x for x in image) == pytest.approx(1, abs=1e-5)
        assert len(image) == len(text)
    else:  # BLIP-2: one vector per query
        assert len(image[0]) == len(text)


def test_uploads_and_data_urls_read_as_base64_does(send, images, model_dirs):
    model = str(model_dirs["caption"])
    files = [("images", (path.name, path.read_bytes())) for path in IMAGES[:2]]
    form = {"model": model, "max_new_tokens": "4", "prompt": "a picture of"}
    urls = [f"data:image/png;base64,{image}" for image in images[:2]]
    settings = {"model": model, "max_new_tokens": 4, "prompt": "a picture of"}
    uploaded, as_urls, encoded = send(
        ("POST", "/v1/caption", {"files": files, "data": form}),
        post("/v1/caption", {**settings, "images": urls}),
        post("/v1/caption", {**settings, "images": images[:2]}),
    )
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == as_urls.json() == encoded.json()
    files = [("image", ("photo.jpg", IMAGES[0].read_bytes()))]
    form = {"model": str(model_dirs["itm"]), "texts": ["a cat", "a rocket"]}
    (matched,) = send(("POST", "/v1/match", {"files": files, "data": form}))
    assert [r["text"] for r in matched.json()["results"]] == ["a cat", "a rocket"]


def test_a_request_without_model_gets_the_first_that_serves_the_route(send, images, model_dirs):
    caption, vqa = send(
        post("/v1/caption", {"images": images[:1]}), post("/v1/vqa", {"images": images[:1], "question": "what?"})
    )
    assert caption.json()["model"] == str(model_dirs["caption"])
    assert vqa.json()["model"] == str(model_dirs["vqa"])


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("caption", "a picture of", lambda p: p("image-to-text", "caption")(PATHS[0], prompt="a picture of")),
        ("vqa", "what is it?", lambda p: p("visual-question-answering", "vqa")(image=PATHS[0], question="what is it?")),
        ("blip2-opt", "what is it?", lambda p: p("visual-question-answering", "blip2-opt")(PATHS[0], "what is it?")),
        ("blip2-opt", None, lambda p: p("image-to-text", "blip2-opt")(PATHS[0])),  # nothing asked: a caption
    ],
)
def test_chat_completion_answers_as_the_pipeline(send, images, model_dirs, pipelines, name, text, expected):
    (response,) = send(post("/v1/chat/completions", chat_body(str(model_dirs[name]), images[0], text)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == str(model_dirs[name])
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": next(iter(expected(pipelines)[0].values()))}
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (usage["prompt_tokens"] > 0) == (text is not None)


def test_chat_sampling_with_a_seed_is_reproducible_and_n_gives_n_choices(send, images, model_dirs):
    body = chat_body(str(model_dirs["blip2-opt"]), images[0], "what?", temperature=0.9, seed=7, n=3, max_tokens=6)
    first, again = send(post("/v1/chat/completions", body), post("/v1/chat/completions", body))
    contents = [c["message"]["content"] for c in first.json()["choices"]]
    assert len(contents) == 3
    assert contents == [c["message"]["content"] for c in again.json()["choices"]]
    greedy = chat_body(str(model_dirs["blip2-opt"]), images[0], "what?", n=2)
    (response,) = send(post("/v1/chat/completions", greedy))
    first, second = response.json()["choices"]  # greedy search has one answer: n copies of it
    assert first["message"] == second["message"] and second["index"] == 1


def test_chat_streams_server_sent_events(send, images, model_dirs):
    body = chat_body(str(model_dirs["caption"]), images[0], "a picture of", stream=True)
    plain = chat_body(str(model_dirs["caption"]), images[0], "a picture of")
    streamed, answered = send(post("/v1/chat/completions", body), post("/v1/chat/completions", plain))
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == answered.json()["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_models_list_every_loaded_model(send, model_dirs):
    listed, one, missing = send(
        ("GET", "/v1/models", {}), ("GET", f"/v1/models/{model_dirs['vqa']}", {}), ("GET", "/v1/models/nope", {})
    )
    assert listed.json()["object"] == "list"
    assert [m["id"] for m in listed.json()["data"]] == [str(path) for path in model_dirs.values()]
    assert {m["object"] for m in listed.json()["data"]} == {"model"}
    assert one.json()["id"] == str(model_dirs["vqa"])
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "model_not_found"


def test_health_ready_and_metrics(send, make_service, images):
    service = make_service()
    caption, bad, health, ready, metrics = send(
        post("/v1/caption", {"images": images[:2], "max_new_tokens": 3}),
        ("POST", "/v1/caption", {"content": b"{", "headers": {"content-type": "application/json"}}),
        ("GET", "/health", {}),
        ("GET", "/ready", {}),
        ("GET", "/metrics", {}),
        service=service,
    )
    assert caption.status_code == 200 and bad.status_code == 400
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = service.metrics.render()  # after every request above finished
    assert 'blipkit_requests_total{route="/v1/caption",status="200"} 1' in text
    assert 'blipkit_requests_total{route="/v1/caption",status="400"} 1' in text
    assert 'blipkit_request_duration_seconds_count{route="/v1/caption"} 2' in text
    assert 'blipkit_batch_size_count{task="image-to-text"} 1' in text
    assert 'blipkit_images_total{task="image-to-text"} 2' in text
    for name in ("blipkit_queue_depth 0", "blipkit_in_flight_requests", "blipkit_images_per_second"):
        assert name in text


def test_the_openapi_document_describes_every_route(send):
    (response,) = send(("GET", "/openapi.json", {}))
    paths = response.json()["paths"]
    for route in ("/v1/caption", "/v1/vqa", "/v1/match", "/v1/embeddings"):
        assert set(paths[route]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "messages" in json.dumps(paths["/v1/chat/completions"]["post"]["requestBody"])
    assert {"/health", "/ready", "/metrics", "/v1/models"} <= set(paths)
