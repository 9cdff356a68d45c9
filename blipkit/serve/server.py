"""``blipkit serve``'s process: load the models, serve the app under uvicorn, print the address once ready, and on
SIGTERM or SIGINT drain - answer what is in flight, new requests 503 - then exit 0 (a second signal: at once)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    import fastapi  # noqa: F401  (the app's framework: checked here to name the extra that brings it)
    import uvicorn
except ImportError as error:
    raise ImportError(f"blipkit serve needs the serve extra: pip install 'blipkit[serve]' ({error})") from None

from blipkit.serve.app import create_app
from blipkit.serve.limits import Limits
from blipkit.serve.models import Models, load_model
from blipkit.serve.service import Service

DRAIN_POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but a signal drains before it stops (uvicorn's own stops listening at once, so new
    requests would be refused, not answered 503) and the process exits 0 (uvicorn's re-raises the signal)."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        self._loop = asyncio.get_running_loop()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: Any) -> None:
        if self.service.draining:  # asked twice: stop now
            self.force_exit = self.should_exit = True
            return
        self.service.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._wait_for_in_flight())

    async def _wait_for_in_flight(self) -> None:
        # Bounded by --timeout-s: a request still waiting then gets its 504 and is done.
        while self.service.in_flight or not self.service.batcher.idle:
            await asyncio.sleep(DRAIN_POLL_S)
        self.should_exit = True

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            names = ", ".join(model.name for model in self.service.models)
            print(f"blipkit: serving {names} at http://{host}:{port}", flush=True)


async def serve(service: Service, host: str, port: int) -> None:
    """Serve until a signal, then drain; ``port`` 0 takes a free one (the printed address says which)."""
    config = uvicorn.Config(create_app(service), host=host, port=port, lifespan="off", log_level="warning")
    try:
        await DrainingServer(config, service).serve()
    finally:
        await service.close()


def run(
    models: Sequence[str],
    host: str,
    port: int,
    limits: Limits,
    load_options: dict[str, Any],
    indexes: Sequence[str] = (),
    **batching: Any,
) -> int:
    """Load ``models`` (ids or directories) with ``load_options`` (dtype, device, quantize), open ``indexes``
    (``blipkit index`` folders, searched at /v1/search), and serve them."""
    # Loaded in the thread that will run them, so that torch computes in one thread only (see Service.compute).
    compute = ThreadPoolExecutor(1, thread_name_prefix="blipkit-model")
    loaded = []
    for name in models:
        print(f"blipkit: loading {name}", file=sys.stderr, flush=True)
        options = {k: v for k, v in load_options.items() if v is not None}
        loaded.append(compute.submit(load_model, name, **options).result())
    opened = []
    if indexes:
        from blipkit.index.index import Index

        device, dtype = load_options.get("device"), load_options.get("dtype")
        opened = [compute.submit(Index.open, directory, device=device, dtype=dtype).result() for directory in indexes]
    service = Service(Models(loaded), limits, indexes=opened, compute=compute, **batching)
    asyncio.run(serve(service, host, port))
    return 0
