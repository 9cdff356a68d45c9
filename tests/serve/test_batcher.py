"""The batcher alone, with fake models: batch sizes and keys, order, the bounded queue, cancellation and a bad
request that fails alone. No timing: requests submitted in one turn of the loop all queue before it dispatches."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from blipkit.serve.batcher import Batcher, QueueFull


class Recorder:
    """A fake model: each result is its item doubled; calls are recorded as (key, items)."""

    def __init__(self, fail_on=None) -> None:
        self.calls: list[tuple[object, list]] = []
        self.fail_on = fail_on

    def __call__(self, key, items):
        self.calls.append((key, list(items)))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot take {self.fail_on}")
        return [item * 2 for item in items]


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize(("requests", "batch"), [(8, 4), (10, 4), (3, 8), (5, 1)])
def test_concurrent_requests_fill_batches(requests, batch):
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch_size=batch, max_wait_s=0)
        results = await asyncio.gather(*(batcher.submit("k", [i]) for i in range(requests)))
        await batcher.close()
        return results

    assert run(main()) == [[2 * i] for i in range(requests)]
    assert len(model.calls) == math.ceil(requests / batch)
    assert all(len(items) <= batch for _, items in model.calls)


def test_a_request_larger_than_a_batch_runs_over_several_in_order():
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch_size=3, max_wait_s=0)
        results = await asyncio.gather(batcher.submit("k", list(range(7))), batcher.submit("k", [10, 11]))
        await batcher.close()
        return results

    assert run(main()) == [[0, 2, 4, 6, 8, 10, 12], [20, 22]]
    assert [items for _, items in model.calls] == [[0, 1, 2], [3, 4, 5], [6, 10, 11]]


def test_keys_never_share_a_batch_and_the_oldest_key_goes_first():
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch_size=8, max_wait_s=0)
        submits = [batcher.submit(key, [i]) for i, key in enumerate("abab")]
        results = await asyncio.gather(*submits)
        await batcher.close()
        return results

    assert run(main()) == [[0], [2], [4], [6]]
    assert model.calls == [("a", [0, 2]), ("b", [1, 3])]


def test_a_partial_batch_runs_once_its_wait_is_over():
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch_size=8, max_wait_s=0.01)
        results = await asyncio.gather(batcher.submit("k", [1]), batcher.submit("k", [2]))
        await batcher.close()
        return results

    assert run(main()) == [[2], [4]]
    assert model.calls == [("k", [1, 2])]


def test_a_full_queue_refuses_at_once_and_says_when_to_retry():
    started, release = threading.Event(), threading.Event()

    def held(key, items):
        started.set()
        release.wait(10)
        return items

    async def main():
        batcher = Batcher(held, max_batch_size=1, max_wait_s=0, max_queue=1)
        running = asyncio.ensure_future(batcher.submit("k", ["running"]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        queued = asyncio.ensure_future(batcher.submit("k", ["queued"]))
        await asyncio.sleep(0)  # let it queue
        assert batcher.depth == 1
        with pytest.raises(QueueFull) as refused:
            await batcher.submit("k", ["refused"])
        release.set()
        results = await asyncio.gather(running, queued)
        await batcher.close()
        return refused.value, results

    refused, results = run(main())
    assert refused.retry_after >= 1
    assert results == [["running"], ["queued"]]


def test_more_work_than_the_deadline_allows_is_refused_at_once():
    now = [0.0]

    def ten_seconds_an_item(key, items):  # on a clock of the test's own: no time passes
        now[0] += 10 * len(items)
        return items

    async def main():
        batcher = Batcher(ten_seconds_an_item, max_batch_size=1, max_wait_s=0, deadline_s=25, clock=lambda: now[0])
        first = await batcher.submit("k", [1])  # the batcher learns: 10 s an item
        alone = await batcher.submit("k", [1, 2, 3])  # nothing ahead: it runs, whatever the estimate says
        queued = [asyncio.ensure_future(batcher.submit("k", [i])) for i in range(2)]  # 20 s of work
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="~30 s of work ahead, over the 25 s limit"):
            await batcher.submit("k", [3])
        results = await asyncio.gather(*queued)
        await batcher.close()
        return first, alone, results

    assert run(main()) == ([1], [1, 2, 3], [[0], [1]])


def test_a_cancelled_request_leaves_the_queue_and_never_runs():
    started, release = threading.Event(), threading.Event()
    seen = []

    def held(key, items):
        seen.extend(items)
        started.set()
        release.wait(10)
        return items

    async def main():
        batcher = Batcher(held, max_batch_size=1, max_wait_s=0)
        running = asyncio.ensure_future(batcher.submit("k", ["running"]))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        waiting = asyncio.ensure_future(batcher.submit("k", ["cancelled", "too"]))
        await asyncio.sleep(0)
        assert batcher.depth == 2
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert batcher.depth == 0
        release.set()
        result = await running
        after = await batcher.submit("k", ["after"])
        await batcher.close()
        return result, after

    assert run(main()) == (["running"], ["after"])
    assert seen == ["running", "after"]


def test_a_failing_request_fails_alone_and_its_batch_mates_get_their_results():
    model = Recorder(fail_on=13)

    async def main():
        batcher = Batcher(model, max_batch_size=8, max_wait_s=0)
        results = await asyncio.gather(
            batcher.submit("k", [1]), batcher.submit("k", [13]), batcher.submit("k", [2]), return_exceptions=True
        )
        await batcher.close()
        return results

    first, failed, last = run(main())
    assert (first, last) == ([2], [4])
    assert isinstance(failed, ValueError)
    assert [items for _, items in model.calls] == [[1, 13, 2], [1], [13], [2]]


def test_metrics_hear_of_every_model_call():
    heard = []

    async def main():
        batcher = Batcher(Recorder(), max_batch_size=2, max_wait_s=0, on_batch=lambda k, n, s: heard.append((k, n)))
        await asyncio.gather(*(batcher.submit("k", [i]) for i in range(3)))
        await batcher.close()

    run(main())
    assert heard == [("k", 2), ("k", 1)]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(Recorder(), max_batch_size=0)
