"""The FastAPI app: blipkit's routes, health and metrics, and every error as JSON ``{"error": {"type", "message"}}``."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from blipkit.serve import openai_api
from blipkit.serve.batcher import QueueFull
from blipkit.serve.bodies import openapi_body, read_body
from blipkit.serve.limits import BodySizeLimit, RequestRefused
from blipkit.serve.metrics import CONTENT_TYPE
from blipkit.serve.models import ModelNotFound, ServedModel, presented
from blipkit.serve.schemas import CaptionRequest, EmbeddingsRequest, MatchRequest, SearchRequest, VqaRequest
from blipkit.serve.service import Service, Timeout

log = logging.getLogger("blipkit.serve")
HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed"}  # the framework's own: no such route, or method
ALWAYS_ANSWERED = ("/health", "/ready", "/metrics")  # answered while draining too (ready says 503 itself)


def create_app(service: Service) -> FastAPI:
    """The app over ``service``; its limits' body size is counted on the stream before any route reads it."""
    app = FastAPI(title="blipkit", summary="BLIP and BLIP-2 captions, answers, scores and embeddings over HTTP.")
    _errors(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Models loaded and not draining: 200, else 503."""
        if service.draining:
            return _error(503, "draining", "the server is shutting down")
        models = [{"name": model.name, "routes": model.routes} for model in service.models]
        return JSONResponse({"status": "ready", "models": models})

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text: requests by route and status, latency, queue depth, batch sizes, images/s."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/caption", openapi_extra=openapi_body(CaptionRequest))
    async def caption(request: Request) -> dict[str, Any]:
        """Caption each image: ``{"images": [...], "prompt"?, "max_new_tokens"?, "num_beams"?, ...}``."""
        body = await read_body(request, CaptionRequest)
        served = service.models.pick("/v1/caption", body.model)
        texts = None if body.prompt is None else [body.prompt] * len(body.images)
        service.check_texts(texts or [], "prompt")
        generated = await service.generate(served, "image-to-text", body.images, texts, body)
        return {"model": served.name, "results": _records(served, "image-to-text", generated, texts, "captions")}

    @app.post("/v1/vqa", openapi_extra=openapi_body(VqaRequest))
    async def vqa(request: Request) -> dict[str, Any]:
        """Answer a question about each image: ``{"images": [...], "question": ...}`` or ``"questions": [...]``."""
        body = await read_body(request, VqaRequest)
        served = service.models.pick("/v1/vqa", body.model)
        questions = body.asked()
        service.check_texts(questions, "question")
        task = "visual-question-answering"
        generated = await service.generate(served, task, body.images, questions, body)
        return {"model": served.name, "results": _records(served, task, generated, questions, "answers")}

    @app.post("/v1/match", openapi_extra=openapi_body(MatchRequest))
    async def match(request: Request) -> dict[str, Any]:
        """Score texts against an image: ITM probability (``itm``) and ITC cosine (``itc``) for each."""
        body = await read_body(request, MatchRequest)
        served = service.models.pick("/v1/match", body.model)
        service.check_texts(body.texts, "text")
        scores = await service.match(served, body.image, body.texts)
        record = served.tasks["image-text-matching"].task.record
        return {"model": served.name, "results": [record(s, t) for s, t in zip(scores, body.texts, strict=True)]}

    @app.post("/v1/embeddings", openapi_extra=openapi_body(EmbeddingsRequest))
    async def embeddings(request: Request) -> dict[str, Any]:
        """Normalized ITC embeddings of images and texts, comparable by dot product (BLIP-2: one per query)."""
        body = await read_body(request, EmbeddingsRequest)
        served = service.models.pick("/v1/embeddings", body.model)
        service.check_texts(body.texts or [], "text")
        vectors = await service.embed(served, body.images, body.texts)
        kinds = ["image"] * len(body.images or []) + ["text"] * len(body.texts or [])
        data = [{"object": "embedding", "index": i, "input": kind, "embedding": vector}
                for i, (kind, vector) in enumerate(zip(kinds, vectors, strict=True))]  # fmt: skip
        return {"object": "list", "model": served.name, "data": data}

    @app.post("/v1/search", openapi_extra=openapi_body(SearchRequest))
    async def search(request: Request) -> dict[str, Any]:
        """Search a loaded index (``--index DIR``) by ``text`` or ``image``: ``k`` rows best first, ``rerank`` the
        best K by ITM, ``where`` a SQL filter - as ``blipkit search`` and ``Index.search``."""
        body = await read_body(request, SearchRequest)
        name, hits = await service.search(body)
        return {"index": name, "results": hits}

    app.include_router(openai_api.router(service))
    app.add_middleware(BodySizeLimit, max_bytes=service.limits.max_body_bytes)
    # Outermost: counts and times the size limit's refusals too.
    app.add_middleware(Accounting, service=service, paths=frozenset(app.openapi()["paths"]))
    return app


def _records(
    served: ServedModel, task: str, generated: list[list[str]], texts: list[str] | None, every: str
) -> list[dict[str, Any]]:
    """Each image's record as the task's batch jobs write it (``caption``; ``question`` and ``answer``), with
    ``every`` sequence when several were asked for."""
    registered = served.tasks[task].task
    records = []
    for sequences, text in zip(generated, texts or [None] * len(generated), strict=True):
        record = registered.record(sequences, text)
        if len(sequences) > 1:
            record[every] = presented(registered, sequences, text)
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------- errors
def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _errors(app: FastAPI) -> None:
    """Every failure as a JSON error: the request's own faults 4xx, an overloaded or draining server 429/503, a
    late answer 504; anything else 500, logged."""
    handlers: dict[type[Exception], Callable[[Exception], JSONResponse]] = {
        RequestRefused: lambda e: _error(e.status, e.kind, e.message),
        QueueFull: lambda e: _error(429, "queue_full", str(e), {"Retry-After": str(e.retry_after)}),
        ModelNotFound: lambda e: _error(404, "model_not_found", str(e)),
        ValidationError: lambda e: _error(422, "invalid_request", _validation_message(e.errors())),
        HTTPException: lambda e: _error(
            e.status_code, HTTP_ERRORS.get(e.status_code, "http_error"), str(e.detail), e.headers
        ),
    }
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, _respond_with(handler))


def _respond_with(handler: Callable[[Exception], JSONResponse]) -> Callable[[Request, Exception], Awaitable]:
    async def respond(request: Request, error: Exception) -> JSONResponse:
        return handler(error)

    return respond


class Accounting:
    """Pure ASGI middleware: counts requests in flight and by route and status with their latency, answers 503
    while draining, turns the deadline into 504 and anything unexpected into a logged 500."""

    def __init__(self, app: Any, service: Service, paths: frozenset[str]) -> None:
        self.app = app
        self.service = service
        self.paths = paths  # the app's routes: metrics label requests by these, and "other" for the rest

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        started, status = time.perf_counter(), 0
        service = self.service

        async def send_counted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def fail(code: int, kind: str, message: str) -> None:
            if not status:  # nothing sent yet (a streamed answer that started cannot turn into an error)
                await _error(code, kind, message)(scope, receive, send_counted)

        service.in_flight += 1
        try:
            if service.draining and path not in ALWAYS_ANSWERED:
                return await fail(503, "draining", "the server is shutting down")
            try:
                await service.within_deadline(self.app(scope, receive, send_counted))
            except Timeout as error:
                await fail(504, "timeout", str(error))
            except Exception:
                log.exception("unexpected error on %s", path)
                await fail(500, "internal_error", "the server failed; see its log")
        finally:
            service.in_flight -= 1
            # The route's template where the router got to it (not when the body size refused it first).
            route = getattr(scope.get("route"), "path", None) or (path if path in self.paths else "other")
            service.metrics.request(route, status or 500, time.perf_counter() - started)
