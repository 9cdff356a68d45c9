"""OpenAI's wire format: ``POST /v1/chat/completions`` (an image and its prompt or question in a user message)
and ``GET /v1/models``, so that existing OpenAI clients talk to blipkit unchanged."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from blipkit.serve.bodies import openapi_body, read_body
from blipkit.serve.limits import RequestRefused
from blipkit.serve.models import ModelNotFound, ServedModel, presented
from blipkit.serve.schemas import MAX_BEAMS, MAX_NEW_TOKENS, Generation
from blipkit.serve.service import Service

OWNER = "blipkit"


class Lenient(BaseModel):
    # OpenAI clients send fields blipkit has no use for (user, stream_options, logprobs, ...): ignored, not refused.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class ImageUrl(Lenient):
    url: str = Field(description="a data: URL (or base64; an http(s) URL where the server allows its domain)")


class ContentPart(Lenient):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class Message(Lenient):
    role: str
    content: str | list[ContentPart] | None = None


class ChatRequest(Lenient):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2, description="0 or unset: greedy; above 0: sampling")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_BEAMS)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool = False


def router(service: Service) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The loaded models, as OpenAI lists its own."""
        return {"object": "list", "data": [_model_card(model) for model in service.models]}

    @api.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        served = service.models.by_name.get(name)
        if served is None:
            raise ModelNotFound(f"no model {name!r} is loaded; loaded: {', '.join(service.models.by_name)}")
        return _model_card(served)

    @api.post("/v1/chat/completions", openapi_extra=openapi_body(ChatRequest, forms=False))
    async def chat(request: Request) -> Any:
        """The last user message's image, and its text as the question (VQA, BLIP-2) or the prompt a caption
        continues; ``max_tokens``, ``temperature``, ``top_p``, ``n`` and ``seed`` as OpenAI reads them."""
        body = await read_body(request, ChatRequest, forms=False)
        served = service.models.pick("/v1/chat/completions", body.model)
        image, text = _image_and_text(body.messages)
        task = served.task_for("/v1/chat/completions").task.name
        if not text and "image-to-text" in served.tasks:  # nothing asked: a model that captions describes the image
            task = "image-to-text"
        if task == "visual-question-answering" and not text:
            raise RequestRefused(422, "invalid_request", f"model {served.name!r} answers questions: add a text part")
        texts = [text] if text else None
        service.check_texts(texts or [], "message text")
        settings = _settings(body)
        (sequences,) = await service.generate(served, task, [image], texts, settings)
        # Greedy search has one answer: n copies of it, as n choices.
        sequences = sequences * body.n if len(sequences) == 1 else sequences
        answers = presented(served.tasks[task].task, sequences, text)
        completion = _completion(served, task, text, answers, settings.max_new_tokens)
        if body.stream:
            return StreamingResponse(_chunks(completion), media_type="text/event-stream")
        return completion

    return api


def _model_card(model: ServedModel) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": OWNER}


def _image_and_text(messages: list[Message]) -> tuple[str, str]:
    """The last user message's one image and its text parts, joined."""
    user = next((m for m in reversed(messages) if m.role == "user"), None)
    if user is None:
        raise RequestRefused(400, "invalid_request", "messages hold no user message")
    parts = user.content if isinstance(user.content, list) else [ContentPart(type="text", text=user.content or "")]
    images = [part.image_url.url for part in parts if part.type == "image_url" and part.image_url is not None]
    if len(images) != 1:
        raise RequestRefused(
            400, "invalid_request", f"the user message needs one image_url part, got {len(images)} ({_example()})"
        )
    text = " ".join(part.text for part in parts if part.type == "text" and part.text).strip()
    return images[0], text


def _example() -> str:
    return '"content": [{"type": "text", "text": "..."}, {"type": "image_url", "image_url": {"url": "data:..."}}]'


def _settings(body: ChatRequest) -> Generation:
    sampling = bool(body.temperature)
    return Generation(
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        do_sample=sampling or None,
        temperature=body.temperature if sampling else None,
        top_p=body.top_p if sampling else None,
        num_return_sequences=body.n if sampling and body.n > 1 else None,
        seed=body.seed,
    )


def _completion(served: ServedModel, task: str, text: str, answers: list[str], max_tokens: int | None) -> dict:
    loaded = served.tasks[task]
    tokenizer = loaded.processor.tokenizer
    prompt_tokens = len(tokenizer.tokenize(loaded.prompt_template.format(text))) if text else 0
    choices, completion_tokens = [], 0
    for index, answer in enumerate(answers):
        tokens = len(tokenizer.tokenize(answer))
        completion_tokens += tokens
        finish = "length" if max_tokens is not None and tokens >= max_tokens else "stop"
        message = {"role": "assistant", "content": answer}
        choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.name,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chunks(completion: dict) -> Iterator[str]:
    """The finished completion as server-sent ``chat.completion.chunk`` events: each choice's whole text in one
    delta, then its finish reason, then ``[DONE]``."""
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    for choice in completion["choices"]:
        delta = {"index": choice["index"], "delta": choice["message"], "logprobs": None, "finish_reason": None}
        yield f"data: {json.dumps(head | {'choices': [delta]})}\n\n"
        done = {"index": choice["index"], "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
        yield f"data: {json.dumps(head | {'choices': [done]})}\n\n"
    yield "data: [DONE]\n\n"
