"""The server's metrics in the Prometheus text format (version 0.0.4), written here: a few counters, gauges and
histograms need no client library. Updated on the event loop only, so no locks."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
RATE_WINDOW_S = 60.0  # images/s is averaged over this many seconds


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *labels: str, by: float = 1) -> None:
        self.values[labels] += by

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}\n# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labels, labels)} {_number(value)}"


class Gauge:
    """A value read when the metrics are scraped."""

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n{self.name} {_number(self.read())}"


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.buckets, self.labels = name, help, buckets, labels
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1  # the first bucket whose bound is >= value
        self.sums[labels] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}\n# TYPE {self.name} histogram"
        for labels, counts in sorted(self.counts.items()):
            total = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                total += count
                le = 'le="+Inf"' if bound == float("inf") else f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.labels, labels, le)} {total}"
            yield f"{self.name}_sum{_labels(self.labels, labels)} {_number(self.sums[labels])}"
            yield f"{self.name}_count{_labels(self.labels, labels)} {total}"


class Metrics:
    """What /metrics shows: requests by route and status, their latency, the queue, batches and images/s."""

    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float]) -> None:
        self.requests = Counter("blipkit_requests_total", "HTTP requests by route and status.", ("route", "status"))
        self.latency = Histogram(
            "blipkit_request_duration_seconds", "Time to answer a request, by route.", LATENCY_BUCKETS, ("route",)
        )
        self.batch_size = Histogram("blipkit_batch_size", "Items per model call, by task.", BATCH_BUCKETS, ("task",))
        self.batch_latency = Histogram(
            "blipkit_batch_duration_seconds", "Time of one model call, by task.", LATENCY_BUCKETS, ("task",)
        )
        self.images = Counter("blipkit_images_total", "Images through the model, by task.", ("task",))
        self._recent: deque[tuple[float, int]] = deque()  # (when, images) of the last RATE_WINDOW_S
        self._all = [
            self.requests,
            self.latency,
            Gauge("blipkit_queue_depth", "Items waiting for the model.", queue_depth),
            Gauge("blipkit_in_flight_requests", "Requests being answered now.", in_flight),
            self.batch_size,
            self.batch_latency,
            self.images,
            Gauge(
                "blipkit_images_per_second",
                f"Images through the model per second, over {RATE_WINDOW_S:.0f} s.",
                self.images_per_second,
            ),  # fmt: skip
        ]

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(route, str(status))
        self.latency.observe(seconds, route)

    def batch(self, task: str, size: int, seconds: float, images: int) -> None:
        self.batch_size.observe(size, task)
        self.batch_latency.observe(seconds, task)
        if images:
            self.images.inc(task, by=images)
            self._recent.append((time.monotonic(), images))

    def images_per_second(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        return sum(images for _, images in self._recent) / RATE_WINDOW_S

    def render(self) -> str:
        return "\n".join(line for metric in self._all for line in metric.render()) + "\n"
