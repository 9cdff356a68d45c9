"""What the routes share: the models, the batcher, the limits and the decoding threads - a request's images and
texts in, the results its task's pipeline() gives out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from PIL import Image

from blipkit.processing.image import ImageError
from blipkit.serve.batcher import Batcher, Run
from blipkit.serve.limits import (
    Limits,
    RequestRefused,
    check_image_count,
    check_text,
    decode_image,
    image_from_reference,
)
from blipkit.serve.metrics import Metrics
from blipkit.serve.models import BatchKey, Item, ModelNotFound, Models, ServedModel
from blipkit.serve.schemas import Generation, SearchRequest
from blipkit.tasks import LoadedTask

if TYPE_CHECKING:
    from blipkit.index.index import Index

T = TypeVar("T")


class Timeout(Exception):
    """A request not answered within ``timeout_s``."""


class Service:
    """The server's state and the steps every route takes. ``run`` replaces ``models.run`` as the batcher's model
    call (tests count or hold the calls with it)."""

    def __init__(
        self,
        models: Models,
        limits: Limits,
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 10,
        max_queue: int = 256,
        timeout_s: float = 60,
        decode_workers: int = 2,
        run: Run | None = None,
        indexes: Sequence[Index] = (),
        compute: ThreadPoolExecutor | None = None,
    ) -> None:
        self.models = models
        self.indexes = {str(index.directory): index for index in indexes}  # by the directory given to --index
        # Every torch op of the models - batches and searches - runs in this one thread, best the one that loaded
        # them (``blipkit serve`` loads them there): a second thread computing in torch would slow every model call
        # (see LoadedTask.image_array). One search at a time also keeps an index's snapshot to one thread.
        self.compute = compute or ThreadPoolExecutor(1, thread_name_prefix="blipkit-model")
        self.limits = limits
        self.timeout_s = timeout_s
        self.batcher = Batcher(
            run or models.run,
            max_batch_size,
            max_wait_ms / 1000,
            max_queue,
            self._batch_done,
            deadline_s=timeout_s,
            worker=self.compute,
        )
        self.decoders = ThreadPoolExecutor(decode_workers, thread_name_prefix="blipkit-decode")
        self.in_flight = 0  # HTTP requests being answered
        self.draining = False  # set on SIGTERM/SIGINT: new requests get 503 while these finish
        self.metrics = Metrics(lambda: self.batcher.depth, lambda: self.in_flight)

    async def within_deadline(self, work: Awaitable[T]) -> T:
        """``work``'s result, or ``Timeout`` after ``timeout_s`` - its queued items then leave the batch queue."""
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError:
            raise Timeout(f"no answer within {self.timeout_s:g} s (--timeout-s)") from None

    def check_texts(self, texts: Sequence[str], what: str) -> None:
        for text in texts:
            check_text(text, self.limits, what)

    async def pixels(self, loaded: LoadedTask, sources: Sequence[str | bytes]) -> list[np.ndarray]:
        """Each image (base64, data: URL, allowed URL or uploaded bytes) preprocessed for the model, (3, height,
        width), in the decoding threads, off the event loop; the model's thread makes them a batch."""
        check_image_count(len(sources), self.limits)
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(self.decoders, self._pixels, loaded, s) for s in sources))

    def _image(self, source: str | bytes) -> Image.Image:
        """An image from a request, within the limits: uploaded bytes, base64, a data: URL or an allowed URL."""
        if isinstance(source, bytes):
            return decode_image(source, self.limits)
        return image_from_reference(source, self.limits)

    def _pixels(self, loaded: LoadedTask, source: str | bytes) -> np.ndarray:
        image = self._image(source)
        try:
            return loaded.image_array(image)
        except ImageError as error:  # a mode the image processor cannot convert to RGB
            raise RequestRefused(422, "invalid_image", str(error)) from error

    async def generate(
        self,
        served: ServedModel,
        task: str,
        sources: Sequence[str | bytes],
        texts: Sequence[str] | None,
        settings: Generation,
    ) -> list[list[str]]:
        """Each image's generated texts (a prompt or question each, or none), batched with requests of the same
        settings (and prompt, for captions)."""
        loaded = served.tasks[task]
        options = settings.generate_options()
        seeded = settings.seed is not None and bool(options.get("do_sample"))
        prompt = texts[0] if texts is not None and task == "image-to-text" else None
        key = BatchKey(served.name, task, tuple(sorted(options.items())), prompt, seeded)
        pixels = await self.pixels(loaded, sources)
        rows = texts if texts is not None else [None] * len(pixels)
        # A seed gives each image the draws of pipeline(image, generator=torch.Generator().manual_seed(seed)).
        generators = [self._generator(loaded, settings.seed) if seeded else None for _ in pixels]
        items = [Item(p, t, g) for p, t, g in zip(pixels, rows, generators, strict=True)]
        return await self._submit(key, items)

    @staticmethod
    def _generator(loaded: LoadedTask, seed: int) -> torch.Generator:
        return torch.Generator(loaded.model.device).manual_seed(seed)

    async def match(self, served: ServedModel, source: str | bytes, texts: Sequence[str]) -> list[tuple[float, float]]:
        """(ITM probability, ITC cosine) of each text with the image: the texts in groups of ``max_batch_size``, as
        pipeline(batch_size=max_batch_size) scores them, each group one item of the batch."""
        loaded = served.tasks["image-text-matching"]
        (pixels,) = await self.pixels(loaded, [source])
        size = self.batcher.max_batch_size
        items = [Item(pixels, tuple(texts[start : start + size])) for start in range(0, len(texts), size)]
        groups = await self._submit(BatchKey(served.name, loaded.task.name), items)
        return [scores for group in groups for scores in group]

    async def embed(
        self, served: ServedModel, sources: Sequence[str | bytes] | None, texts: Sequence[str] | None
    ) -> list[Any]:
        """The normalized ITC embeddings of the images, then of the texts."""
        results: list[Any] = []
        if sources is not None:
            loaded = served.tasks["image-embedding"]
            items = [Item(p) for p in await self.pixels(loaded, sources)]
            results += await self._submit(BatchKey(served.name, loaded.task.name), items)
        if texts is not None:
            results += await self._submit(BatchKey(served.name, "text-embedding"), [Item(text=t) for t in texts])
        return results

    async def search(self, request: SearchRequest) -> tuple[str, list[dict[str, Any]]]:
        """The index's name and its best rows for the request's text or image, as ``Index.search`` gives them."""
        if not self.indexes:
            raise ModelNotFound("no index is loaded: start the server with --index DIR")
        name = request.index or next(iter(self.indexes))
        index = self.indexes.get(name)
        if index is None:
            raise ModelNotFound(f"no index {name!r} is loaded; loaded: {', '.join(self.indexes)}")
        if request.text is not None:
            check_text(request.text, self.limits, "text")
        loop = asyncio.get_running_loop()
        image = None
        if request.image is not None:
            image = await loop.run_in_executor(self.decoders, self._image, request.image)

        def search() -> list[dict[str, Any]]:
            return index.search(text=request.text, image=image, k=request.k, rerank=request.rerank,
                                where=request.where)  # fmt: skip

        try:
            return name, await loop.run_in_executor(self.compute, search)
        except ValueError as error:  # a filter the store cannot parse, a re-rank the index cannot do: named
            raise RequestRefused(422, "invalid_request", str(error)) from error

    async def _submit(self, key: BatchKey, items: list[Item]) -> list[Any]:
        try:
            return await self.batcher.submit(key, items)
        except (ValueError, TypeError) as error:
            # The model refusing this request's inputs or settings (blipkit raises these where a bad value enters,
            # e.g. num_return_sequences above num_beams); the batcher ran the request alone to tell.
            raise RequestRefused(422, "invalid_request", str(error)) from error

    async def close(self) -> None:
        await self.batcher.close()
        self.decoders.shutdown(wait=False)
        self.compute.shutdown(wait=False)

    def _batch_done(self, key: BatchKey, size: int, seconds: float) -> None:
        self.metrics.batch(key.task, size, seconds, images=0 if key.task == "text-embedding" else size)
