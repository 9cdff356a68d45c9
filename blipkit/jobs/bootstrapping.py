"""CapFilt (BLIP's data bootstrapping): a captioner writes synthetic captions by nucleus sampling, the ITM head
filters web and synthetic captions alike, and the pairs it keeps train the next model.

Each image's sampling is seeded from the job's seed and the image's id, so batch size, engine and resuming never
change a caption; both models see the image once (the ViT runs once per image per model, never per caption).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blipkit.jobs.report import write_report
from blipkit.jobs.runner import JobSummary, execute
from blipkit.jobs.sinks import ROW_FORMATS, OutputError, Sink, open_grouped_sink, read_rows
from blipkit.jobs.sources import Item, input_list, iter_items
from blipkit.jobs.workers import failure
from blipkit.modeling.base import check_dtype
from blipkit.modeling.quantize import check_method
from blipkit.processing.image import load_image
from blipkit.tasks import MATCHING_MODEL, TASKS, generate_texts, load

KEEP_RULES = ("itm", "threshold", "top")
FIELDS = ("id", "status", "error", "source", "caption", "itm", "itc", "kept")
DEFAULT_CAPTIONER = TASKS["image-to-text"].default_model


@dataclass(frozen=True)
class CapFiltSpec:
    """A CapFilt job's settings (light, so Ray can ship it to actors); ``make_worker`` loads both models."""

    captioner: str | None = None
    filter: str | None = None
    captions_per_image: int = 1
    top_p: float = 0.9
    max_new_tokens: int = 30
    prompt: str = "a picture of "
    keep: str = "itm"
    threshold: float = 0.5
    top_k: int = 1
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    quantize: str | None = None
    task = "capfilt"
    fields = FIELDS

    def __post_init__(self) -> None:
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)}, got {self.keep!r}")
        if not isinstance(self.captions_per_image, int) or self.captions_per_image < 0:
            raise ValueError(f"captions_per_image must be 0 or more, got {self.captions_per_image!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens!r}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold is an ITM probability, in [0, 1]; got {self.threshold!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k!r}")
        if self.dtype not in (None, "auto"):
            check_dtype(self.dtype)
        if self.quantize is not None:
            check_method(self.quantize)

    def settings(self) -> dict[str, Any]:
        """What decides the rows (not the device, batch size or engine), recorded beside the output."""

        def source(model: str) -> str:
            return os.path.abspath(model) if os.path.isdir(model) else model

        return {
            "task": self.task,
            "captioner": source(self.captioner or DEFAULT_CAPTIONER),
            "filter": source(self.filter or MATCHING_MODEL),
            "captions_per_image": self.captions_per_image,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "prompt": self.prompt,
            "keep": self.keep,
            "threshold": self.threshold,
            "top_k": self.top_k,
            "seed": self.seed,
            "dtype": str(self.dtype).removeprefix("torch.") if self.dtype else None,
            "quantize": self.quantize,
        }

    def make_worker(self) -> CapFiltWorker:
        return CapFiltWorker(self)

    def check_output(self, out: Path) -> None:
        if out.suffix.lower() not in ROW_FORMATS:
            raise OutputError(f"cannot write {out}: capfilt writes {', '.join(ROW_FORMATS)}, or DIR/ for shards")

    def open_sink(self, out: Path) -> Sink:
        return open_grouped_sink(out, self.fields)


@dataclass
class PreparedImages:
    """A batch after decoding: failed records, and for the good items each model's pixel values."""

    items: list[Item]
    failed: list[dict[str, Any]]
    for_captioner: list[np.ndarray]  # preprocessed by each model's processor (LoadedTask.image_array)
    for_filter: list[np.ndarray]


class CapFiltWorker:
    def __init__(self, spec: CapFiltSpec) -> None:
        self.spec = spec
        # A job captions many images: decode steps that read packed bf16 weights pay back packing them at load.
        common = {"dtype": spec.dtype, "device": spec.device, "quantize": spec.quantize, "pack_weights": True}
        self.captioner = load(TASKS["image-to-text"], spec.captioner, **common)
        self.filter = load(TASKS["image-text-matching"], spec.filter, **common)

    def prepare(self, items: list[Item]) -> PreparedImages:
        """Decode each image once, for both models' processors; a bad image fails alone, with its reason."""
        good, failed, for_captioner, for_filter = [], [], [], []
        for item in items:
            if item.error:
                failed.append(failure(item, item.error))
                continue
            try:
                image = load_image(item.image)
                for_captioner.append(self.captioner.image_array(image))
                for_filter.append(self.filter.image_array(image))
            except Exception as error:  # a bad image is a failed row; the job goes on
                failed.append(failure(item, str(error)))
                continue
            good.append(item)
        return PreparedImages(good, failed, for_captioner, for_filter)

    def infer(self, batch: PreparedImages) -> list[dict[str, Any]]:
        """One record per image: its rows (web caption first, then the synthetic ones), each scored and judged."""
        records = list(batch.failed)
        if not batch.items:
            return records
        synthetic = self._captions(batch)
        texts, image_of_text, sources = [], [], []
        for index, (item, captions) in enumerate(zip(batch.items, synthetic, strict=True)):
            web = [item.text] if item.text and item.text.strip() else []
            for source, text in [*(("web", t) for t in web), *(("synthetic", t) for t in captions)]:
                texts.append(text)
                image_of_text.append(index)
                sources.append(source)
        match, similarity = self._scores(self.filter.model_pixels(batch.for_filter), texts, image_of_text)
        rows_of: list[list[dict[str, Any]]] = [[] for _ in batch.items]
        for index, source, text, itm, itc in zip(image_of_text, sources, texts, match, similarity, strict=True):
            rows_of[index].append({"source": source, "caption": text, "itm": itm, "itc": itc})
        for item, rows in zip(batch.items, rows_of, strict=True):
            for row, kept in zip(rows, self._kept([row["itm"] for row in rows]), strict=True):
                row["kept"] = kept
            records.append({"id": item.id, "status": "ok", "error": None, "rows": rows})
        return records

    def process(self, items: list[Item]) -> list[dict[str, Any]]:
        return self.infer(self.prepare(items))

    def _captions(self, batch: PreparedImages) -> list[list[str]]:
        """Each image's synthetic captions, without the prompt, by nucleus sampling from its own generator."""
        spec, loaded = self.spec, self.captioner
        if spec.captions_per_image == 0:
            return [[] for _ in batch.items]
        pixels = loaded.model_pixels(batch.for_captioner)
        options = caption_options(spec, [item.id for item in batch.items], loaded.model.device)
        prompts = [spec.prompt] * len(batch.items) if spec.prompt else None
        generated = generate_texts(loaded, pixels, prompts, options)
        return [[loaded.written_after(spec.prompt, t).strip() for t in texts] for texts in generated]

    def _scores(self, pixels: torch.Tensor, texts: list[str], image_of_text: list[int]):
        """ITM probability and ITC similarity of each text with its image, the filter's ViT run once per image."""
        if not texts:
            return [], []
        model = self.filter.model
        index = torch.tensor(image_of_text, device=model.device)
        with torch.no_grad():
            match, similarity = model.image_text_scores(pixels, **self.filter.tokens(texts), image_of_text=index)
        return match.float().tolist(), similarity.float().tolist()

    def _kept(self, itm: list[float]) -> list[bool]:
        """The keep rule over one image's captions: the ITM head says match (p > 0.5, the paper's rule), p above
        ``threshold``, or the ``top_k`` best by ITM."""
        if self.spec.keep == "top":
            best = sorted(range(len(itm)), key=lambda i: -itm[i])[: self.spec.top_k]
            return [i in best for i in range(len(itm))]
        bar = 0.5 if self.spec.keep == "itm" else self.spec.threshold
        return [p > bar for p in itm]


def caption_options(spec: CapFiltSpec, ids: list[str], device: torch.device | str) -> dict[str, Any]:
    """The captioner's generate keywords for images ``ids``: pure nucleus sampling (top-k off), one generator per
    image seeded from the job's seed and the image's id."""
    return {
        "do_sample": True,
        "top_p": spec.top_p,
        "top_k": 0,
        "max_new_tokens": spec.max_new_tokens,
        "num_return_sequences": spec.captions_per_image,
        "generator": [image_generator(spec.seed, image_id, device) for image_id in ids],
    }


def image_generator(seed: int, image_id: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one image, the same on every run, engine and batch: seeded by a hash of seed and id."""
    digest = hashlib.sha256(f"{seed}\0{image_id}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def run_capfilt(
    inputs: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    workers: int = 2,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int = 1,
    ray_gpus_per_actor: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
    report: str | os.PathLike | None = None,
    **settings: Any,
) -> JobSummary:
    """CapFilt over ``inputs``: one row per (image, caption) in ``out`` (.jsonl, .csv, .parquet), or with ``out`` a
    folder (``"DIR/"``) the rows in ``DIR/capfilt.jsonl`` and the kept pairs as webdataset shards in ``DIR``.
    Resumable like every job; ``report`` writes a self-contained HTML page. ``settings``: ``CapFiltSpec``'s."""
    from blipkit.devices import check_device

    spec = CapFiltSpec(**settings)
    check_device(spec.device)
    as_shards = str(out).endswith(("/", os.sep)) or Path(out).is_dir()
    rows_path = Path(out) / SHARD_ROWS if as_shards else Path(out)
    if as_shards and overwrite:
        for shard in Path(out).glob("shard-*.tar"):
            shard.unlink()
    summary = execute(spec, inputs, rows_path, batch_size, workers, engine, ray_address, ray_actors,
                      ray_gpus_per_actor, overwrite, progress)  # fmt: skip
    if not (progress or as_shards or report is not None):
        return summary
    rows = read_rows(rows_path, FIELDS)  # every row the output holds, this run's and earlier runs'
    if progress:
        print(f"capfilt: {kept_counts(rows)}", file=sys.stderr)
    if as_shards or report is not None:
        items = {item.id: item for item in iter_items(input_list(inputs))}
        if as_shards:
            write_shards(rows, items, Path(out))
        if report is not None:
            write_report(rows, items, Path(report))
    return summary


def kept_counts(rows: list[dict[str, Any]]) -> str:
    """'kept 3 of 4 web captions, 5 of 8 synthetic' over an output's rows (CSV's read back as text)."""
    parts = []
    for source in ("web", "synthetic"):
        mine = [row for row in rows if row.get("source") == source]
        kept = sum(_is_true(row.get("kept")) for row in mine)
        parts.append(f"{kept} of {len(mine)} {source}" + (" captions" if source == "web" else ""))
    return "kept " + ", ".join(parts)


SHARD_ROWS = "capfilt.jsonl"  # where a shard output keeps its rows (and resumes from)
SAMPLES_PER_SHARD = 1000


def write_shards(rows: list[dict[str, Any]], items: dict[str, Item], folder: Path) -> None:
    """The kept pairs as webdataset shards ``shard-NNNNNN.tar``: ``KEY.<image format>``, ``KEY.txt`` (the caption)
    and ``KEY.json`` (id, source, itm, itc) per pair, written afresh from every row the output holds."""
    kept = [row for row in rows if _is_true(row.get("kept"))]
    missing = sorted({row["id"] for row in kept if row["id"] not in items})
    if missing:
        raise OutputError(
            f"{len(missing)} kept images are not among the inputs (e.g. {missing[0]}), so their shards cannot be "
            "written: run with the inputs that made the output"
        )
    for shard in folder.glob("shard-*.tar"):
        shard.unlink()
    for start in range(0, len(kept), SAMPLES_PER_SHARD):
        temporary = folder / f"shard-{start // SAMPLES_PER_SHARD:06d}.tar.tmp"
        with tarfile.open(temporary, "w") as tar:
            for number, row in enumerate(kept[start : start + SAMPLES_PER_SHARD], start=start):
                data, extension = _encoded(items[row["id"]])
                meta = {k: row[k] for k in ("id", "source", "itm", "itc")}
                for suffix, payload in ((extension, data), ("txt", row["caption"].encode()),
                                        ("json", json.dumps(meta, ensure_ascii=False).encode())):  # fmt: skip
                    info = tarfile.TarInfo(f"{number:09d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        os.replace(temporary, temporary.with_suffix(""))


def _encoded(item: Item) -> tuple[bytes, str]:
    """An image's bytes as the source holds them, and the extension its format goes by."""
    data = item.image if isinstance(item.image, bytes) else Path(item.image).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        fmt = (image.format or "jpeg").lower()
    return data, {"jpeg": "jpg"}.get(fmt, fmt)


def _is_true(value: Any) -> bool:
    return value is True or value == "True"  # CSV reads booleans back as text
