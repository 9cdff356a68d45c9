"""Dynamic batching, apart from any web framework: requests that share a key run together in one model call, up to
``max_batch_size`` items or ``max_wait_s`` after the oldest arrived, whichever comes first, in one worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# run(key, items) -> one result per item, in order; called in the worker thread, one call at a time.
Run = Callable[[Hashable, Sequence[Any]], list[Any]]
# on_batch(key, items, seconds): told of every model call, on the event loop, once its batch is done (metrics).
OnBatch = Callable[[Hashable, int, float], None]


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests, or more work than ``deadline_s`` allows; ``retry_after`` (seconds) is
    when to try again."""

    def __init__(self, why: str, retry_after: int) -> None:
        super().__init__(f"the queue is full ({why}); retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Request:
    key: Hashable
    items: Sequence[Any]
    future: asyncio.Future
    arrived: float
    results: list[Any] = field(default_factory=list)
    taken: int = 0  # items already handed to a batch: a request larger than a batch runs over several

    @property
    def waiting(self) -> int:
        return len(self.items) - self.taken


@dataclass(frozen=True)
class _Part:
    """A request's items [start, stop) in one batch."""

    request: _Request
    start: int
    stop: int


class Batcher:
    """Queues requests by key and runs each batch through ``run`` in a worker thread of its own.

    ``submit`` raises ``QueueFull`` at once when ``max_queue`` requests wait, or when the items ahead of a request
    would take the model longer than ``deadline_s`` at its recent seconds per item (refused at once, a client can go
    elsewhere, rather than wait to time out while the model works for nobody). A cancelled ``submit`` (a timeout, a
    client gone) takes its items out of the queue. When a batch fails, each of its requests runs again alone, so a
    request with a bad input fails itself and not its batch-mates.
    """

    def __init__(
        self,
        run: Run,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 256,
        on_batch: OnBatch | None = None,
        deadline_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        worker: Executor | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"need max_batch_size >= 1, max_queue >= 1 and max_wait_s >= 0, got {max_batch_size}, "
                f"{max_queue} and {max_wait_s}"
            )
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.deadline_s = deadline_s
        self.clock = clock
        self.running = 0  # items in the model now
        self.last_batch_seconds = 0.0
        self.item_seconds = 0.0  # a model call's seconds per item, averaged over recent calls
        self._queues: dict[Hashable, deque[_Request]] = {}
        # One thread runs the model calls, one at a time: the caller's (it may run other model work there), or ours.
        self._owns_worker = worker is None
        self._worker = worker or ThreadPoolExecutor(1, thread_name_prefix="blipkit-model")
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Items waiting for the model."""
        return sum(request.waiting for queue in self._queues.values() for request in queue)

    @property
    def idle(self) -> bool:
        return not self._queues and not self.running

    async def submit(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        """The results of ``items``, one each, run in batches with other requests of the same ``key``."""
        if not items:
            return []
        retry_after = max(1, math.ceil(self.max_wait_s + self.last_batch_seconds))
        waiting = sum(len(queue) for queue in self._queues.values())
        if waiting >= self.max_queue:
            raise QueueFull(f"{waiting} requests waiting", retry_after)
        ahead = self.depth + self.running
        expected = (ahead + len(items)) * self.item_seconds
        # With nothing ahead a request always runs: the estimate (maybe from one slow call) is renewed by it.
        if ahead and self.deadline_s is not None and expected > self.deadline_s:
            raise QueueFull(f"~{expected:.0f} s of work ahead, over the {self.deadline_s:g} s limit", retry_after)
        self._start()
        request = _Request(key, items, asyncio.get_running_loop().create_future(), self.clock())
        request.results = [None] * len(items)
        self._queues.setdefault(key, deque()).append(request)
        self._wake.set()
        try:
            return await request.future
        finally:
            self._withdraw(request)  # done, failed or cancelled: nothing of it stays queued

    async def close(self) -> None:
        """Stop dispatching and let the worker finish its batch."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            self._dispatcher = None
        if self._owns_worker:
            self._worker.shutdown(wait=False)

    def _start(self) -> None:
        # Started by the first request, on the loop that serves it (an app may be built before its loop runs), and
        # again on a new loop (a test client may run each request on a loop of its own).
        loop = asyncio.get_running_loop()
        if self._dispatcher is None or self._dispatcher.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._dispatcher = loop.create_task(self._dispatch())

    def _withdraw(self, request: _Request) -> None:
        queue = self._queues.get(request.key)
        if queue is not None and request in queue:
            queue.remove(request)
            if not queue:
                del self._queues[request.key]

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self._next_key()
            parts = self._take(key)
            self.running = sum(part.stop - part.start for part in parts)
            calls: list[tuple[int, float]] = []  # (items, seconds) of each model call, told on this loop
            try:
                outcomes = await loop.run_in_executor(self._worker, self._run_parts, key, parts, calls)
            finally:
                self.running = 0
            self.last_batch_seconds = sum(seconds for _, seconds in calls)
            for size, seconds in calls:
                recent = seconds / size
                self.item_seconds = recent if not self.item_seconds else 0.8 * self.item_seconds + 0.2 * recent
                if self.on_batch is not None:
                    self.on_batch(key, size, seconds)
            for part, outcome in zip(parts, outcomes, strict=True):
                self._deliver(part, outcome)

    async def _next_key(self) -> Hashable:
        """The key to run next: a full batch at once, else the one whose oldest request's wait is over; the oldest
        first among several, so that no key starves."""
        while True:
            self._wake.clear()
            now = self.clock()
            full = [k for k, queue in self._queues.items() if sum(r.waiting for r in queue) >= self.max_batch_size]
            due = full or [k for k, queue in self._queues.items() if queue[0].arrived + self.max_wait_s <= now]
            if due:
                return min(due, key=lambda k: self._queues[k][0].arrived)
            if not self._queues:
                await self._wake.wait()
                continue
            oldest = min(queue[0].arrived for queue in self._queues.values())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), oldest + self.max_wait_s - now)

    def _take(self, key: Hashable) -> list[_Part]:
        """Up to ``max_batch_size`` items of ``key``'s requests, oldest first; fully taken requests leave the
        queue (they wait on their future), the last one may stay with the rest of its items."""
        queue = self._queues[key]
        parts, room = [], self.max_batch_size
        while queue and room:
            request = queue[0]
            count = min(room, request.waiting)
            parts.append(_Part(request, request.taken, request.taken + count))
            request.taken += count
            room -= count
            if not request.waiting:
                queue.popleft()
        if not queue:
            del self._queues[key]
        return parts

    def _run_parts(self, key: Hashable, parts: list[_Part], calls: list) -> list[list[Any] | BaseException]:
        """In the worker: the batch in one call; if it fails, each request's part alone, failing on its own."""
        items = [item for part in parts for item in part.request.items[part.start : part.stop]]
        try:
            results = self._call(key, items, calls)
        except Exception as error:
            if len(parts) == 1:
                return [error]
            return [self._run_alone(key, part, calls) for part in parts]
        outcomes, start = [], 0
        for part in parts:
            outcomes.append(results[start : start + part.stop - part.start])
            start += part.stop - part.start
        return outcomes

    def _run_alone(self, key: Hashable, part: _Part, calls: list) -> list[Any] | BaseException:
        if part.request.future.done():  # timed out or gone meanwhile
            return []
        try:
            return self._call(key, part.request.items[part.start : part.stop], calls)
        except Exception as error:
            return error

    def _call(self, key: Hashable, items: Sequence[Any], calls: list) -> list[Any]:
        started = self.clock()
        try:
            results = self.run(key, items)
        finally:
            calls.append((len(items), self.clock() - started))
        if len(results) != len(items):
            raise RuntimeError(f"run returned {len(results)} results for {len(items)} items")
        return results

    def _deliver(self, part: _Part, outcome: list[Any] | BaseException) -> None:
        request = part.request
        if request.future.done():
            return
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)  # its other items, if any wait, leave with it (submit's finally)
            return
        request.results[part.start : part.stop] = outcome
        if part.stop == len(request.items):  # parts of one request run in order: its last part completes it
            request.future.set_result(request.results)
