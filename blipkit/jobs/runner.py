"""Run a job: list the images, skip what the output already has, decode ahead in threads, write batch by batch."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blipkit.jobs import provenance
from blipkit.jobs.lock import exclusive
from blipkit.jobs.ray_engine import check_gpus_per_actor, run_on_ray
from blipkit.jobs.sinks import make_parent
from blipkit.jobs.sources import Item, input_list, iter_items
from blipkit.jobs.workers import JobSpec, WorkerSpec


@dataclass(frozen=True)
class JobSummary:
    done: int  # rows written by this run with status "ok"
    failed: int  # rows written by this run with status "failed"
    skipped: int  # images the output already had
    seconds: float

    @property
    def all_failed(self) -> bool:
        """Every image this run processed failed (and there was at least one): the CLI exits with 3."""
        return self.failed > 0 and self.done == 0

    def __str__(self) -> str:
        return f"done {self.done}, failed {self.failed}, skipped {self.skipped}, time {self.seconds:.1f}s"


def run(
    task: str,
    inputs: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | None = None,
    batch_size: int = 8,
    dtype: str | None = None,
    quantize: str | None = None,
    device: str | None = None,
    question: str | None = None,
    text: str | None = None,
    prompt: str | None = None,
    workers: int = 2,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int = 1,
    ray_gpus_per_actor: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
    **generate_kwargs: Any,
) -> JobSummary:
    """Run ``task`` ("caption", "ask", "match", "embed") over ``inputs``, appending to ``out``; see the README.

    ``out`` is locked for the job; resuming it needs the settings that wrote it, unless ``overwrite`` removes it
    first. Every option is checked before any file is touched."""
    from blipkit.devices import check_device

    check_device(device)  # an unknown or absent device fails here, before the output file is created
    spec = WorkerSpec(task, model, dtype, device, question, text, prompt, generate_kwargs, quantize=quantize)
    return execute(spec, inputs, out, batch_size, workers, engine, ray_address, ray_actors, ray_gpus_per_actor,
                   overwrite, progress)  # fmt: skip


def execute(
    spec: JobSpec,
    inputs: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    batch_size: int = 8,
    workers: int = 2,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int = 1,
    ray_gpus_per_actor: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
) -> JobSummary:
    """Run the job ``spec`` over ``inputs`` into ``out``: locked, its settings recorded and checked on resume,
    the images ``out`` already has skipped, batches written as they finish."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    check_gpus_per_actor(ray_gpus_per_actor)
    task = spec.task
    out = Path(out)
    spec.check_output(out)
    started = time.perf_counter()
    items = list(iter_items(input_list(inputs)))
    make_parent(out)
    with exclusive(out):
        provenance.claim(out, spec.settings(), overwrite)
        sink = spec.open_sink(out)
        complete = False
        counts = {"ok": 0, "failed": 0}
        try:
            done = sink.done_ids()
            pending = [item for item in items if item.id not in done]
            if task == "match":  # similar text lengths share a batch, so little of it is padding
                pending.sort(key=lambda item: len(spec.text or item.text or ""))
            batches = run_batches(
                spec, pending, batch_size, workers, engine, ray_address, ray_actors, ray_gpus_per_actor
            )
            with progress_bar(len(pending), task, progress) as bar:
                for records in batches:
                    sink.write(records)
                    for record in records:
                        counts[record["status"]] += 1
                    bar.update(len(records))
            complete = True
        finally:
            sink.close(complete)
    summary = JobSummary(counts["ok"], counts["failed"], len(items) - len(pending), time.perf_counter() - started)
    if progress:
        print(f"{task}: {summary}", file=sys.stderr)
    return summary


def run_batches(
    spec: JobSpec,
    pending: list[Item],
    batch_size: int,
    workers: int = 2,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int = 1,
    ray_gpus_per_actor: float = 0.0,
) -> Iterator[list[dict]]:
    """The records of ``pending``, a batch at a time as the engine finishes them (also what ``blipkit.index``
    embeds with: the same workers, decode-ahead threads, Ray actors and failed rows as a job)."""
    if engine == "ray":
        return run_on_ray(spec, pending, batch_size, ray_address, ray_actors, ray_gpus_per_actor)
    return _run_locally(spec, pending, batch_size, workers)


def _run_locally(spec: JobSpec, pending: list[Item], batch_size: int, workers: int) -> Iterator[list[dict]]:
    """Decode and preprocess up to ``workers`` batches ahead in threads while the model runs on the current one."""
    if not pending:
        return
    worker = spec.make_worker()
    chunks = (pending[i : i + batch_size] for i in range(0, len(pending), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blipkit-decode") as pool:
        ahead: deque[Future] = deque()
        for chunk in chunks:
            ahead.append(pool.submit(worker.prepare, chunk))
            if len(ahead) > workers:
                yield worker.infer(ahead.popleft().result())
        while ahead:
            yield worker.infer(ahead.popleft().result())


def progress_bar(total: int, task: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=task, unit="img", disable=not enabled, file=sys.stderr, smoothing=0.1)


def caption(inputs, out, **kwargs: Any) -> JobSummary:
    """Caption every image of ``inputs`` into ``out`` (see ``run`` for the options)."""
    return run("caption", inputs, out, **kwargs)


def ask(inputs, out, question: str | None = None, **kwargs: Any) -> JobSummary:
    """Ask every image of ``inputs`` the same ``question``; without one, each row its table's ``question`` column
    (a row without one is a failed row)."""
    return run("ask", inputs, out, question=question, **kwargs)


def match(inputs, out, **kwargs: Any) -> JobSummary:
    """Score every image against its caption from the source, or against ``text=`` for all."""
    return run("match", inputs, out, **kwargs)


def embed(inputs, out, **kwargs: Any) -> JobSummary:
    """ITC image embeddings (normalized) of every image of ``inputs``."""
    return run("embed", inputs, out, **kwargs)
