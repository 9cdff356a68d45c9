"""The same job on Ray Data: ``map_batches`` over an actor pool, one model per actor, results streamed back.

The driver writes the results through the same sink as a local run, so output formats, resuming and failure rows
are identical; only where the model runs changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

from blipkit.jobs.sources import Item
from blipkit.jobs.workers import JobSpec


class _ActorWorker:
    """Ray instantiates this once per actor: the model loads once and serves every batch sent to that actor."""

    def __init__(self, spec: JobSpec) -> None:
        self.worker = spec.make_worker()

    def __call__(self, batch: dict) -> dict:
        columns = zip(batch["id"], batch["image"], batch["text"], batch["error"], strict=True)
        items = [Item(str(i), _image(image), str(text) or None, str(err) or None) for i, image, text, err in columns]
        # Records leave the actor as JSON so that ok and failed rows (different columns) share one schema.
        return {"record": [json.dumps(r, ensure_ascii=False) for r in self.worker.process(items)]}


def _image(value) -> str | bytes:
    return value if isinstance(value, str) else bytes(value)


def check_gpus_per_actor(gpus: float) -> float:
    """Ray's rule, told where the value enters: a share of one GPU (0 to 1), or a whole number of GPUs."""
    if not math.isfinite(gpus) or gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
        raise ValueError(f"GPUs per Ray actor must be a share of one GPU (0 to 1) or a whole number, got {gpus:g}")
    return gpus


def run_on_ray(
    spec: JobSpec,
    pending: list[Item],
    batch_size: int,
    address: str | None,
    actors: int,
    gpus_per_actor: float,
) -> Iterator[list[dict]]:
    """Start or join Ray and check that it has the GPUs asked for, at once; the batches of records then stream back
    as the actors finish them."""
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray: pip install 'blipkit[ray]'") from None
    if not pending:
        return iter(())
    if not ray.is_initialized():
        # No address: start a local Ray on this machine; an address ("auto", "ray://host:10001") joins a cluster.
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    _check_cluster_gpus(ray.cluster_resources().get("GPU", 0), actors, gpus_per_actor)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    rows = [{"id": i.id, "image": i.image, "text": i.text or "", "error": i.error or ""} for i in pending]
    dataset = ray.data.from_items(rows)
    results = dataset.map_batches(
        _ActorWorker,
        fn_constructor_kwargs={"spec": spec},
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=1,
        num_gpus=gpus_per_actor,
        batch_format="numpy",
    )
    batches = results.iter_batches(batch_size=batch_size, batch_format="numpy")
    return ([json.loads(record) for record in batch["record"]] for batch in batches)


def _check_cluster_gpus(available: float, actors: int, gpus_per_actor: float) -> None:
    """Ray waits forever for GPUs a cluster does not have; say so at once instead."""
    needed = actors * gpus_per_actor
    if needed > available:
        has = f"{available:g} GPUs" if available else "no GPUs"
        raise RuntimeError(
            f"the Ray cluster has {has}, but {actors} actors x {gpus_per_actor:g} GPUs need {needed:g}: lower "
            "--ray-gpus (0 runs on CPUs) or --ray-actors, or join a cluster with GPUs (--ray-address)"
        )
