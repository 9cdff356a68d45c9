"""Concurrent requests share model calls, and each gets exactly what pipeline() gives it alone: greedy, beams,
questions of different lengths, and sampling with a seed (run apart from its batch-mates)."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

import blipkit
from blipkit.tasks import TASKS, load
from tests.conftest import IMAGES

PATHS = [str(path) for path in IMAGES]


class Counted:
    """The models' calls, counted: (batch key, items) of each."""

    def __init__(self, run) -> None:
        self.run = run
        self.calls: list[tuple] = []

    def __call__(self, key, items):
        self.calls.append((key, len(items)))
        return self.run(key, items)


def concurrently(send, service, path: str, bodies: list[dict]) -> list[dict]:
    responses = send(*(("POST", path, {"json": body}) for body in bodies), service=service)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json()["results"] for r in responses]


@pytest.mark.parametrize(("requests", "per_request", "batch"), [(8, 1, 4), (3, 2, 3)])
def test_n_concurrent_requests_take_n_over_batch_calls_and_get_their_own_results(
    send, make_service, models, images, model_dirs, requests, per_request, batch
):
    counted = Counted(models.run)
    # Batches leave full: the wait never runs out, so no timing decides how they form.
    service = make_service(max_batch_size=batch, max_wait_ms=60_000, run=counted)
    picks = [[(i + j) % len(images) for j in range(per_request)] for i in range(requests)]
    bodies = [{"images": [images[i] for i in pick], "max_new_tokens": 6} for pick in picks]
    results = concurrently(send, service, "/v1/caption", bodies)
    assert len(counted.calls) <= math.ceil(requests * per_request / batch) + 1
    assert all(size == batch for _, size in counted.calls)
    pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"], batch_size=1)
    alone = {i: pipe(PATHS[i], max_new_tokens=6)[0]["generated_text"] for i in range(len(PATHS))}
    assert [[r["caption"] for r in rows] for rows in results] == [[alone[i] for i in pick] for pick in picks]


def test_settings_that_change_results_never_share_a_batch(send, make_service, models, images, model_dirs):
    counted = Counted(models.run)
    service = make_service(max_batch_size=4, max_wait_ms=60_000, run=counted)
    greedy = {"images": images[:2], "max_new_tokens": 5}
    beams = {"images": images[2:], "max_new_tokens": 5, "num_beams": 3}
    results = concurrently(send, service, "/v1/caption", [greedy, beams, greedy, beams])
    assert sorted((key.settings, size) for key, size in counted.calls) == [
        ((("max_new_tokens", 5),), 4),
        ((("max_new_tokens", 5), ("num_beams", 3)), 4),
    ]
    pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"], batch_size=1)
    expected_greedy = [pipe(p, max_new_tokens=5)[0]["generated_text"] for p in PATHS[:2]]
    expected_beams = [pipe(p, max_new_tokens=5, num_beams=3)[0]["generated_text"] for p in PATHS[2:]]
    captions = [[r["caption"] for r in rows] for rows in results]
    assert captions == [expected_greedy, expected_beams, expected_greedy, expected_beams]


@pytest.mark.parametrize("name", ["vqa", "blip2-opt", "blip2-t5"])
def test_questions_of_different_lengths_batched_answer_as_alone(send, make_service, models, images, model_dirs, name):
    counted = Counted(models.run)
    service = make_service(max_batch_size=4, max_wait_ms=60_000, run=counted)
    questions = ["what?", "how many cats?", "is it red?", "where?"]
    model = str(model_dirs[name])
    bodies = [
        {"model": model, "images": [i], "question": q, "max_new_tokens": 5}
        for i, q in zip(images, questions, strict=True)
    ]
    results = concurrently(send, service, "/v1/vqa", bodies)
    assert [size for _, size in counted.calls] == [4]
    pipe = blipkit.pipeline("visual-question-answering", model=model_dirs[name])
    alone = [pipe(image=p, question=q, max_new_tokens=5)[0]["answer"] for p, q in zip(PATHS, questions, strict=True)]
    assert [r[0]["answer"] for r in results] == alone


def test_a_seeded_sample_is_what_pipeline_draws_whatever_runs_beside_it(send, make_service, models, images, model_dirs):
    sample = {"do_sample": True, "top_k": 0, "temperature": 1.5, "max_new_tokens": 8}
    seeded = {"images": images[:2], "seed": 11, **sample}
    others = [{"images": images[2:], "seed": 5, **sample}, {"images": images[1:3], **sample}]
    counted = Counted(models.run)
    alone = concurrently(send, make_service(), "/v1/caption", [seeded])[0]
    service = make_service(max_batch_size=4, max_wait_ms=60_000, run=counted)
    with_others = concurrently(send, service, "/v1/caption", [others[0], seeded, others[1], others[1]])[1]
    pipe = blipkit.pipeline("image-to-text", model=model_dirs["caption"])
    expected = [pipe(p, generator=torch.Generator().manual_seed(11), **sample)[0]["generated_text"] for p in PATHS[:2]]
    assert [r["caption"] for r in alone] == [r["caption"] for r in with_others] == expected
    # Seeded requests batch together, apart from the unseeded ones (which draw from torch's global generator).
    assert sorted((key.seeded, size) for key, size in counted.calls) == [(False, 4), (True, 4)]


def test_text_embeddings_batched_across_requests_are_each_texts_own(send, make_service, models, model_dirs):
    counted = Counted(models.run)
    service = make_service(max_batch_size=4, max_wait_ms=60_000, run=counted)
    texts = ["a cat", "a rocket on the launch pad at night", "coffee", "an astronaut in a white suit"]
    model = str(model_dirs["itm"])
    requests = [("POST", "/v1/embeddings", {"json": {"model": model, "texts": [text]}}) for text in texts]
    responses = send(*requests, service=service)
    assert [size for _, size in counted.calls] == [4]
    task = load(TASKS["text-embedding"], model_dirs["itm"])
    for response, text in zip(responses, texts, strict=True):
        (row,) = response.json()["data"]
        alone = torch.tensor(task.run(None, [text])[0])
        torch.testing.assert_close(torch.tensor(row["embedding"]), alone, atol=1e-6, rtol=0)


def test_requests_for_different_models_run_side_by_side(send, make_service, images, model_dirs):
    caption = {"model": str(model_dirs["caption"]), "images": images[:1], "max_new_tokens": 4}
    opt = {"model": str(model_dirs["blip2-opt"]), "images": images[:1], "max_new_tokens": 4}
    first, second = send(("POST", "/v1/caption", {"json": caption}), ("POST", "/v1/caption", {"json": opt}))
    assert (first.json()["model"], second.json()["model"]) == (caption["model"], opt["model"])


def test_the_event_loop_answers_while_the_model_works(make_service, client, gate, images):
    service = make_service(run=gate)

    async def main():
        async with client(service) as http:
            working = asyncio.ensure_future(http.post("/v1/caption", json={"images": images[:1]}))
            await asyncio.to_thread(gate.started.wait, 60)
            health = await http.get("/health")
            metrics = await http.get("/metrics")
            gate.release.set()
            return health, metrics, await working

    health, metrics, working = asyncio.run(main())
    assert health.status_code == 200 and working.status_code == 200
    assert "blipkit_in_flight_requests 2" in metrics.text  # the held caption and /metrics itself
