"""The ``openai`` package, unchanged, against the server: chat completions (plain and streamed), the model list,
and errors raised as the client's own exceptions."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest


def ask(model: str, image: str, text: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
            ],
        }
    ]


def test_the_openai_client_works_unchanged(make_service, images, model_dirs):
    from blipkit.serve.app import create_app

    service = make_service()
    vqa = str(model_dirs["vqa"])

    async def main():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)))
        client = openai.AsyncOpenAI(base_url="http://blipkit/v1", api_key="unused", http_client=http, max_retries=0)
        try:
            listed = await client.models.list()
            answer = await client.chat.completions.create(
                model=vqa, messages=ask(vqa, images[0], "what is it?"), max_tokens=5, temperature=0
            )
            stream = await client.chat.completions.create(
                model=vqa, messages=ask(vqa, images[0], "what is it?"), max_tokens=5, stream=True
            )
            streamed = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
            with pytest.raises(openai.NotFoundError, match="no model 'gpt-4o' is loaded"):
                await client.chat.completions.create(model="gpt-4o", messages=ask(vqa, images[0], "what?"))
            with pytest.raises(openai.BadRequestError, match="needs one image_url part"):
                await client.chat.completions.create(model=vqa, messages=[{"role": "user", "content": "hello"}])
            return listed, answer, streamed
        finally:
            await client.close()
            await service.close()

    listed, answer, streamed = asyncio.run(main())
    assert vqa in [model.id for model in listed.data]
    assert answer.model == vqa and answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content and streamed == answer.choices[0].message.content
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
