"""``blipkit serve`` under load: full-size random BLIP-base captioning, loopback clients for a fixed time each.

    .venv/bin/python bench/bench_serve.py           # 16 and 64 clients, 60 s each, batching vs --max-batch-size 1
    .venv/bin/python bench/bench_serve.py --quick   # 15 s each, fewer single-client requests

For each server setting (dynamic batching at --max-batch-size 8, then 1) a real ``blipkit serve`` process is
started on 127.0.0.1 and, for each client count, that many clients post one image after another for the phase's
time (after a 429, each waits its Retry-After); no request starts after it (those in flight finish, within the
server's --timeout-s), so every phase ends by itself. Throughput counts answered images per second of the phase;
latency is per answered request. Then one client alone
against the batching server and a direct ``pipeline()`` call on the same image in this process, in turns.
Captions are fixed-length (min_new_tokens = max_new_tokens) so every request does the same work. Random weights:
speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from bench_blip import checkpoint, print_machine

import blipkit

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "tests" / "fixtures" / "images").iterdir())
VOCAB = ROOT / "tests" / "fixtures" / "bert-base-uncased-vocab.txt"
BLIPKIT = Path(sys.executable).parent / "blipkit"
TOKENS = 20
START_S = 600  # loading and the ready line: only a broken server takes this long


def model_dir() -> Path:
    """bench_blip's random full-size BLIP-base captioner, with a processor (384 px, BERT's vocabulary) beside it."""
    path = checkpoint("blip-base", "caption")
    if not (path / "preprocessor_config.json").exists():
        tokenizer = blipkit.BlipTokenizer.from_vocab(VOCAB)
        blipkit.BlipProcessor(blipkit.BlipImageProcessor(), tokenizer).save_pretrained(path)
    return path


class Server:
    """A ``blipkit serve`` process on a free loopback port, stopped with SIGTERM (it must drain and exit 0)."""

    def __init__(self, model: Path, dtype: str, max_batch_size: int) -> None:
        command = [str(BLIPKIT), "serve", "--model", str(model), "--port", "0", "--dtype", dtype,
                   "--max-batch-size", str(max_batch_size), "--max-queue", "1024"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if " at http://" not in line:
            self.process.kill()
            raise RuntimeError(f"blipkit serve did not start: {line!r}")
        self.url = line.rsplit(" at ", 1)[1].strip()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=START_S)


def body(index: int) -> dict:
    image = base64.b64encode(IMAGES[index % len(IMAGES)].read_bytes()).decode()
    return {"images": [image], "max_new_tokens": TOKENS, "min_new_tokens": TOKENS}


async def load(url: str, clients: int, seconds: float) -> dict:
    """``clients`` posting one request after another for ``seconds``: images/s, latency percentiles, statuses."""
    bodies = [body(i) for i in range(len(IMAGES))]
    latencies: list[float] = []
    statuses: Counter = Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=START_S, limits=limits) as http:
        end = time.perf_counter() + seconds

        async def client(number: int) -> None:
            sent = number
            while time.perf_counter() < end:
                started = time.perf_counter()
                response = await http.post("/v1/caption", json=bodies[sent % len(bodies)])
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                elif response.status_code == 429:  # as a polite client: back off as told, within the phase
                    await asyncio.sleep(min(float(response.headers["retry-after"]), end - time.perf_counter()))
                sent += 1

        began = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "images/s": len(latencies) / elapsed,
        "p50": _percentile(latencies, 50),
        "p99": _percentile(latencies, 99),
        "statuses": dict(sorted(statuses.items())),
    }


def _percentile(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def one_client(url: str, pipe, requests: int) -> tuple[float, float, float]:
    """p50 of one client's requests to the server and of direct ``pipe`` calls on the same image, taken in turns
    (so that a change in the machine's load hits both), and the server's mean model call over its requests."""
    settings = {"max_new_tokens": TOKENS, "min_new_tokens": TOKENS}
    served, direct = [], []
    async with httpx.AsyncClient(base_url=url, timeout=START_S) as http:
        await http.post("/v1/caption", json=body(0))  # warm up both
        pipe(str(IMAGES[0]), **settings)
        before = _model_seconds((await http.get("/metrics")).text)
        for _ in range(requests):
            started = time.perf_counter()
            (await http.post("/v1/caption", json=body(0))).raise_for_status()
            served.append(time.perf_counter() - started)
            started = time.perf_counter()
            pipe(str(IMAGES[0]), **settings)
            direct.append(time.perf_counter() - started)
        after = _model_seconds((await http.get("/metrics")).text)
    return statistics.median(served), statistics.median(direct), (after[0] - before[0]) / (after[1] - before[1])


def _model_seconds(metrics: str) -> tuple[float, int]:
    """(seconds, calls) of the server's model calls so far, from its /metrics."""
    values = {}
    for line in metrics.splitlines():
        if line.startswith(("blipkit_batch_duration_seconds_sum", "blipkit_batch_duration_seconds_count")):
            name, value = line.split()
            values[name.split("{")[0].rsplit("_", 1)[1]] = float(value)
    return values.get("sum", 0.0), int(values.get("count", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="15 s phases and 3 single-client requests")
    parser.add_argument("--seconds", type=float, help="length of each load phase (default: 60, --quick 15)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    single = 3 if args.quick else 20
    print_machine()
    model = model_dir()
    print(f"BLIP-base captioning, random weights, {args.dtype}, {TOKENS} tokens per caption, {seconds:g} s a phase\n")
    print("| server | clients | images/s | p50 s | p99 s | statuses | exit |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rates: dict[tuple[int, int], float] = {}
    for batch in (8, 1):
        server = Server(model, args.dtype, batch)
        httpx.post(f"{server.url}/v1/caption", json=body(0), timeout=START_S).raise_for_status()  # warm up
        results = {clients: asyncio.run(load(server.url, clients, seconds)) for clients in args.clients}
        if batch == 8:
            pipe = blipkit.pipeline("image-to-text", model=model, dtype=args.dtype)
            alone, direct, model_call = asyncio.run(one_client(server.url, pipe, single))
            del pipe
        code = server.stop()
        for clients, result in results.items():
            rates[batch, clients] = result["images/s"]
            print(
                f"| --max-batch-size {batch} | {clients} | {result['images/s']:.2f} | {result['p50']:.2f} | "
                f"{result['p99']:.2f} | {result['statuses']} | {code} |",
                flush=True,
            )
    for clients in args.clients:
        print(f"\nbatching vs --max-batch-size 1 at {clients} clients: x{rates[8, clients] / rates[1, clients]:.2f}")
    print(
        f"one client, p50: server {alone * 1000:.0f} ms, direct pipeline() {direct * 1000:.0f} ms, "
        f"difference {(alone - direct) * 1000:+.0f} ms (the server's model call: {model_call * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
