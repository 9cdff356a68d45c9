"""Fixtures for the server tests: tiny checkpoints of every kind the server runs, loaded once, and an in-process
client that sends requests to a fresh app concurrently."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading

import httpx
import pytest

from blipkit.serve.app import create_app
from blipkit.serve.limits import Limits
from blipkit.serve.models import Models, load_model
from blipkit.serve.service import Service
from tests.builders.checkpoints import save_tiny_blip2s, save_tiny_blips
from tests.conftest import IMAGES


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    blip = save_tiny_blips(root)
    # Right padding: a BLIP-2 text embedding is its first token's, which left padding would make a pad's.
    blip2 = save_tiny_blip2s(root / "blip2", opt_padding_side="right")
    return {**blip, **{f"blip2-{name}": path for name, path in blip2.items()}}


@pytest.fixture(scope="session")
def models(model_dirs) -> Models:
    return Models([load_model(str(path)) for path in model_dirs.values()])


@pytest.fixture(scope="session")
def images() -> list[str]:
    """The test photographs, base64-encoded."""
    return [base64.b64encode(path.read_bytes()).decode() for path in IMAGES]


@pytest.fixture
def make_service(models):
    """make_service(**settings) -> a Service over the tiny models (``limits=`` replaces the default limits)."""

    def make(limits: Limits | None = None, **settings) -> Service:
        return Service(models, limits or Limits(), **settings)

    return make


@pytest.fixture
def client():
    """client(service) -> an async context: an httpx client on a fresh app over ``service``, in-process; the
    service is closed after."""

    @contextlib.asynccontextmanager
    async def open_client(service: Service):
        transport = httpx.ASGITransport(app=create_app(service))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://blipkit", timeout=60) as http:
                yield http
        finally:
            await service.close()

    return open_client


@pytest.fixture
def send(make_service, client):
    """send(*requests, service=None) -> their responses: each request is (method, path, httpx keywords), all sent at
    once to one app."""

    def send(*requests, service: Service | None = None) -> list[httpx.Response]:
        async def main():
            async with client(service or make_service()) as http:
                return await asyncio.gather(*(http.request(m, p, **kw) for m, p, kw in requests))

        return asyncio.run(main())

    return send


class Gate:
    """A model call that waits, in the worker, until ``release`` is set: tells ``started`` and records its keys and
    item counts in ``calls``."""

    def __init__(self, run) -> None:
        self.run = run
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple] = []

    def __call__(self, key, items):
        self.calls.append((key, len(items)))
        self.started.set()
        assert self.release.wait(60), "the test never released the gate"
        return self.run(key, items)


@pytest.fixture
def gate(models):
    """A Gate in front of the tiny models' calls (the test releases it; released at the end whatever happens)."""
    gate = Gate(models.run)
    yield gate
    gate.release.set()
