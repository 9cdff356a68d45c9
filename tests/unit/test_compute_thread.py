"""Decoding threads compute with numpy and PIL only, and ``blipkit serve`` runs every model in the thread that
loaded it: a torch op in a second thread starts an OpenMP team beside the model's, and every model call then runs
slower (``LoadedTask.image_array`` says why). An OpenMP team shows as new threads of the process (Linux)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from blipkit.jobs.bootstrapping import CapFiltSpec, CapFiltWorker
from blipkit.jobs.sources import Item
from blipkit.jobs.workers import WorkerSpec
from blipkit.serve.limits import Limits
from blipkit.serve.models import Models, load_model
from blipkit.serve.service import Service
from tests.conftest import IMAGES

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
SIZE = {"height": 384, "width": 384}  # the public checkpoints' size: large enough for torch to split its ops


def process_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def threads_started_by(work) -> int:
    """How many threads ``work`` leaves started when it runs in a fresh thread of a process computing on 2."""
    intra_op = torch.get_num_threads()
    torch.set_num_threads(2)  # the team a new thread would start: itself and one more
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: None).result()
            before = process_threads()
            pool.submit(work).result()
            return process_threads() - before
    finally:
        torch.set_num_threads(intra_op)


def photo_items() -> list[Item]:
    return [Item(id=str(path), image=str(path)) for path in IMAGES * 2]


def test_the_count_sees_a_torch_op_start_a_team():
    images = [torch.zeros(1, 3, 384, 384)] * 8
    assert threads_started_by(lambda: torch.cat(images)) >= 1


def test_a_jobs_decoding_thread_starts_no_team(models):
    worker = WorkerSpec("caption", model=str(models / "caption")).make_worker()
    worker.loaded.processor.image_processor.size = SIZE
    prepared = []
    assert threads_started_by(lambda: prepared.append(worker.prepare(photo_items()))) == 0
    (batch,) = prepared
    assert worker.loaded.model_pixels(batch.images).shape == (len(IMAGES) * 2, 3, 384, 384)


def test_capfilts_decoding_thread_starts_no_team(models):
    worker = CapFiltWorker(CapFiltSpec(captioner=str(models / "caption"), filter=str(models / "itm")))
    for loaded in (worker.captioner, worker.filter):
        loaded.processor.image_processor.size = SIZE
    assert threads_started_by(lambda: worker.prepare(photo_items())) == 0


def test_the_servers_decoding_threads_start_no_team(models):
    served = load_model(str(models / "caption"), dtype="bfloat16")  # pixel values cast: a torch op, to avoid here
    loaded = served.tasks["image-to-text"]
    loaded.processor.image_processor.size = SIZE
    service = Service(Models([served]), Limits())
    photo = IMAGES[0].read_bytes()
    assert threads_started_by(lambda: service._pixels(loaded, photo)) == 0
