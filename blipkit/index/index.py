"""``blipkit.Index``: a persistent, searchable collection of image (or text) embeddings of one retrieval model.

Images come from whatever the batch jobs read (``blipkit.jobs.sources``) and are embedded by the jobs' own worker
(locally with decode-ahead threads, or on Ray); an image that fails is a failed row, reported and not indexed.
New images are told apart by content (a renamed file is not embedded again). Writers hold the jobs' lock on
``DIR/index.lock``; readers see the store's last committed version.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blipkit.index import manifest as manifests
from blipkit.index.manifest import IndexRefused, Manifest
from blipkit.index.search import duplicate_groups, similarities, top_k
from blipkit.index.store import Store, open_store
from blipkit.jobs.lock import exclusive
from blipkit.jobs.sources import Item, iter_items
from blipkit.tasks import MATCHING_MODEL

ANN_MIN_ROWS = 200_000  # from here on an approximate index is kept and used (exact: ~12 ms per 100k rows, 2 cores)
ANN_CANDIDATES = 10  # the approximate index is asked for this many times k, then those are scored exactly
FAILURES = "failures.jsonl"  # the failed rows of the last add, as the jobs write them
HASH_THREADS = 4  # files hashed at once: reading is I/O, and hashlib lets go of the GIL


@dataclass(frozen=True)
class AddSummary:
    """What an add did: embedded, failed (reported, not indexed), skipped (ids already in the index) and duplicates
    (content already in the index under another id, or twice in the inputs: not embedded again)."""

    embedded: int
    failed: int
    skipped: int
    duplicates: int
    seconds: float
    failures: list[dict[str, Any]] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"embedded {self.embedded}, failed {self.failed}, skipped {self.skipped}, "
            f"duplicates {self.duplicates}, time {self.seconds:.1f}s"
        )


@dataclass(frozen=True)
class _Snapshot:
    """An index's rows as searches read them: one store version's ids, labels (paths or texts) and vectors."""

    version: int
    ids: list[str]
    positions: dict[str, int]
    labels: list[str]
    vectors: torch.Tensor  # (rows, dim) or (rows, queries, dim)


class Index:
    """Open with ``Index.open(dir)``, create with ``Index.build(inputs, dir, model=...)``; ``add``, ``remove``,
    ``search``, ``dedup`` and ``info``."""

    def __init__(self, directory: Path, manifest: Manifest, store: Store, device: Any = None, dtype: Any = None):
        self.directory, self.manifest, self.store = directory, manifest, store
        self.device, self.dtype = device, dtype
        self._loaded = None  # the retrieval model, loaded on the first search
        self._snapshot: _Snapshot | None = None  # what searches read, until the store changes

    # ------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, directory: str | os.PathLike, device: Any = None, dtype: Any = None) -> Index:
        directory = Path(directory)
        manifest = manifests.read(directory)
        return cls(directory, manifest, _open_store(directory, manifest), device, dtype)

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        model: str | os.PathLike | None = None,
        kind: str = "images",
        device: Any = None,
        dtype: Any = None,
    ) -> Index:
        """A new, empty index of ``model``'s embeddings (default: blip-itm-base-coco) - or the one already at
        ``directory``, if it holds the same kind and was built with ``model`` (or none is given), so that building
        again resumes."""
        directory = Path(directory)
        if (directory / manifests.FILE).exists():
            index = cls.open(directory, device, dtype)
            manifests.check_same_model(directory, index.manifest, model, kind)
            return index
        if directory.exists() and not directory.is_dir():
            raise IndexRefused(f"cannot make an index at {directory}: it is a file")
        manifest = manifests.describe_model(model or MATCHING_MODEL, kind)
        manifests.write(directory, manifest)
        return cls(directory, manifest, _open_store(directory, manifest), device, dtype)

    @classmethod
    def build(
        cls, inputs: str | list[str], directory: str | os.PathLike, model: str | None = None, **options: Any
    ) -> Index:
        """Create (or resume) an image index at ``directory`` and add ``inputs`` to it; ``options`` as ``add``'s."""
        index = cls.create(directory, model, "images", options.get("device"), options.get("dtype"))
        index.add(inputs, **options)
        return index

    # ------------------------------------------------------------------------------------------ writing
    def add(
        self,
        inputs: str | list[str],
        *,
        model: str | None = None,
        batch_size: int = 8,
        workers: int = 2,
        engine: str = "local",
        ray_address: str | None = None,
        ray_actors: int = 1,
        ray_gpus_per_actor: float = 0.0,
        device: Any = None,
        dtype: Any = None,
        quantize: str | None = None,
        progress: bool = False,
    ) -> AddSummary:
        """Embed the images of ``inputs`` (anything the batch jobs read) that the index does not have yet."""
        from blipkit.jobs.ray_engine import check_gpus_per_actor
        from blipkit.jobs.runner import progress_bar, run_batches
        from blipkit.jobs.workers import WorkerSpec

        manifests.check_same_model(self.directory, self.manifest, model, "images")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
        check_gpus_per_actor(ray_gpus_per_actor)
        spec = WorkerSpec("embed", self.manifest.model, dtype or self.dtype, device or self.device, quantize=quantize)
        started = time.perf_counter()
        items = list(iter_items([_absolute(entry) for entry in _as_list(inputs)]))
        with exclusive(self.directory / "index"):
            known = self.store.rows(["id", "path", "hash"])
            ids = {row["id"] for row in known}
            new = [item for item in items if item.id not in ids]
            pending, hashes, duplicates = self._new_content(new, {row["hash"]: row for row in known})
            batches = run_batches(
                spec, pending, batch_size, workers, engine, ray_address, ray_actors, ray_gpus_per_actor
            )
            by_id = {item.id: item for item in pending}
            failures: list[dict[str, Any]] = []
            embedded = 0
            with progress_bar(len(pending), "index", progress) as bar:
                for records in batches:
                    rows = [self._image_row(by_id[r["id"]], hashes[r["id"]], r["embedding"]) for r in records
                            if r["status"] == "ok"]  # fmt: skip
                    self.store.add(rows)
                    embedded += len(rows)
                    failures += [r for r in records if r["status"] != "ok"]
                    bar.update(len(records))
            self._write_failures(failures)
            self._refresh_ann()
        skipped = len(items) - len(new)
        return AddSummary(embedded, len(failures), skipped, duplicates, time.perf_counter() - started, failures)

    def add_texts(self, inputs: str | list[str], *, batch_size: int = 64, model: str | None = None) -> AddSummary:
        """Embed the texts of ``inputs`` (``.txt`` files, one text a line, or tables with a text column) that the
        index does not have yet (an identical text is kept once)."""
        from blipkit.index.texts import iter_texts
        from blipkit.tasks import embed_texts

        manifests.check_same_model(self.directory, self.manifest, model, "texts")
        started = time.perf_counter()
        entries = list(iter_texts(_as_list(inputs)))
        with exclusive(self.directory / "index"):
            known = self.store.rows(["id", "hash"])
            ids, seen = {row["id"] for row in known}, {row["hash"] for row in known}
            pending = []
            for text_id, text, source in entries:
                digest = _hash(text.encode("utf-8"))
                if text_id not in ids and digest not in seen:
                    seen.add(digest)
                    pending.append({"id": text_id, "text": text, "hash": digest, "source": source})
            skipped = sum(text_id in ids for text_id, _, _ in entries)
            loaded = self._matcher()
            for start in range(0, len(pending), batch_size):
                rows = pending[start : start + batch_size]
                with torch.no_grad():
                    vectors = embed_texts(loaded, None, [row["text"] for row in rows], {})
                self.store.add([{**row, "vector": vector} for row, vector in zip(rows, vectors, strict=True)])
            self._refresh_ann()
        duplicates = len(entries) - skipped - len(pending)
        return AddSummary(len(pending), 0, skipped, duplicates, time.perf_counter() - started)

    def remove(self, ids: list[str]) -> list[str]:
        """Remove rows by id at once (the next search no longer finds them); returns the ids the index did not have."""
        with exclusive(self.directory / "index"):
            present = {row["id"] for row in self.store.rows(["id"])}
            self.store.delete([i for i in ids if i in present])
        return [i for i in ids if i not in present]

    # ------------------------------------------------------------------------------------------ reading
    def search(
        self,
        text: str | None = None,
        image: Any = None,
        k: int = 10,
        rerank: int = 0,
        where: str | None = None,
    ) -> list[dict[str, Any]]:
        """The ``k`` best rows for a ``text`` or an ``image`` (path, URL, bytes, PIL image, array), best first:
        ``{"id", "path" (texts: "text"), "score", "itc", "itm"}``. ``rerank=K`` re-scores the best K image-text
        pairs with the ITM head and ranks them by BLIP's ``ITM match logit + ITC`` (``score``; ``itm`` is the match
        probability), ahead of the rest. ``where`` is a SQL filter over the rows' columns."""
        from blipkit.tasks import embed_texts

        if (text is None) == (image is None):
            raise ValueError("search needs a text or an image (one of them)")
        if k < 1 or rerank < 0:
            raise ValueError(f"k must be at least 1 and rerank at least 0, got k={k}, rerank={rerank}")
        query_kind = "texts" if text is not None else "images"
        if rerank and query_kind == self.manifest.kind:
            raise ValueError(
                f"--rerank scores image-text pairs with the ITM head; a {query_kind[:-1]} query over an index of "
                f"{self.manifest.kind} has none: search without it"
            )
        loaded = self._matcher()
        with torch.no_grad():
            if text is not None:
                query = torch.tensor(embed_texts(loaded, None, [text], {})[0])
            else:  # one ViT pass: the ITC embedding(s), and the tokens ITM reads to re-rank texts
                image_tokens, embeds = loaded.model.read_images(loaded.pixel_values(image))
                query = embeds[0].float().cpu()
        snapshot = self._read()
        positions, scores = self._nearest(snapshot, query, max(k, rerank), where)
        label = self._label()
        hits = [
            {"id": snapshot.ids[p], label: snapshot.labels[p], "score": s, "itc": s, "itm": None}
            for p, s in zip(positions, scores, strict=True)
        ]
        if rerank:
            top = hits[:rerank]
            if text is not None:
                self._rerank_images(loaded, text, top)
            else:
                self._rerank_texts(loaded, image_tokens, top)
            hits[:rerank] = sorted(top, key=lambda hit: -hit["score"] if hit["itm"] is not None else float("inf"))
        return hits[:k]

    def dedup(self, threshold: float = 0.95) -> list[list[dict[str, Any]]]:
        """Groups of near-duplicate rows (similarity >= ``threshold``; images of BLIP-2 compared query by query)."""
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a similarity from -1 to 1, got {threshold}")
        snapshot = self._read()
        groups = duplicate_groups(snapshot.vectors, threshold)
        return [[{"id": snapshot.ids[p], self._label(): snapshot.labels[p]} for p in group] for group in groups]

    def info(self) -> dict[str, Any]:
        failures = self.directory / FAILURES
        failed = len(failures.read_text(encoding="utf-8").splitlines()) if failures.exists() else 0
        return {
            "index": str(self.directory),
            "kind": self.manifest.kind,
            "model": self.manifest.model,
            "model_type": self.manifest.model_type,
            "count": self.store.count(),
            "dim": self.manifest.dim,
            "vectors_per_row": self.manifest.queries,
            "ann": self.store.has_ann(),
            "failed_last_add": failed,
            "disk_bytes": self.store.disk_bytes(),
        }

    # ------------------------------------------------------------------------------------------ internals
    def _matcher(self):
        if self._loaded is None:
            from blipkit.index.matching import load_matcher

            self._loaded = load_matcher(self.manifest.model, self.device, self.dtype)
        return self._loaded

    def _read(self) -> _Snapshot:
        """Every id, label and vector, read again whenever the store changed (here or in another process)."""
        version = self.store.version()
        if self._snapshot is None or self._snapshot.version != version:
            ids, vectors = self.store.vectors()
            labels = {row["id"]: row[self._label()] for row in self.store.rows(["id", self._label()])}
            positions = {i: p for p, i in enumerate(ids)}
            matrix = torch.from_numpy(np.array(vectors, dtype=np.float32))
            self._snapshot = _Snapshot(version, ids, positions, [labels[i] for i in ids], matrix)
        return self._snapshot

    def _nearest(
        self, snapshot: _Snapshot, query: torch.Tensor, k: int, where: str | None
    ) -> tuple[list[int], list[float]]:
        if self.store.has_ann() and len(snapshot.ids) >= ANN_MIN_ROWS and query.dim() == 1:
            # The approximate index proposes candidates; they are scored exactly, as the exact search would.
            found = self.store.nearest(query.numpy(), k * ANN_CANDIDATES, where)
            candidates = [snapshot.positions[i] for i in found]
            # index_select: indexing a large tensor by a list costs ~8 ms here, whatever the list's length
            rows = snapshot.vectors.index_select(0, torch.tensor(candidates, dtype=torch.long))
            best, values = top_k(similarities(rows, query), k)
            return [candidates[b] for b in best], values
        allowed = None
        if where:
            keep = {row["id"] for row in self.store.rows(["id"], where)}
            allowed = torch.tensor([i in keep for i in snapshot.ids], dtype=torch.bool)
        return top_k(similarities(snapshot.vectors, query), k, allowed)

    def _label(self) -> str:
        return "path" if self.manifest.kind == "images" else "text"

    def _rerank_images(self, loaded, text: str, hits: list[dict[str, Any]]) -> None:
        from blipkit.index.matching import match_logits, rerank_score

        rows = {row["id"]: row for row in self.store.rows(["id", "path"], _id_filter([h["id"] for h in hits]))}
        readable, pixel_values = [], []
        for hit, image in zip(hits, _reread([rows[h["id"]] for h in hits]), strict=True):
            try:
                pixel_values.append(loaded.image_array(image))
            except Exception as error:  # an image gone or broken since it was indexed keeps its ITC place
                print(f"blipkit: cannot re-read {hit['path']} to re-rank it: {error}", file=sys.stderr)
                continue
            readable.append(hit)
        if not readable:
            return
        with torch.no_grad():
            image_tokens, _ = loaded.model.read_images(loaded.model_pixels(pixel_values))
        tokens = {k: v.expand(len(readable), -1) for k, v in loaded.tokens([text]).items()}
        self._score(readable, match_logits(loaded, image_tokens, tokens), rerank_score)

    def _rerank_texts(self, loaded, image_tokens: torch.Tensor, hits: list[dict[str, Any]]) -> None:
        from blipkit.index.matching import match_logits, rerank_score

        tokens = loaded.tokens([hit["text"] for hit in hits])
        self._score(hits, match_logits(loaded, image_tokens.expand(len(hits), -1, -1), tokens), rerank_score)

    @staticmethod
    def _score(hits: list[dict[str, Any]], logits: torch.Tensor, rerank_score) -> None:
        scores = rerank_score(logits[:, 1], torch.tensor([hit["itc"] for hit in hits]))
        probabilities = logits.softmax(-1)[:, 1]
        for hit, score, probability in zip(hits, scores.tolist(), probabilities.tolist(), strict=True):
            hit.update(score=score, itm=probability)

    def _new_content(self, new: list[Item], known: dict[str, dict[str, Any]]) -> tuple[list[Item], dict[str, str], int]:
        """The new items whose content the index lacks, their hashes, and how many were duplicates. A known file
        found under a new name whose old file is gone was renamed: its row takes the new id and path."""
        with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="blipkit-hash") as pool:
            digests = list(pool.map(_content_hash, new))
        pending, hashes, seen, duplicates = [], {}, set(), 0
        for item, digest in zip(new, digests, strict=True):
            if digest is None or item.error:  # unreadable: the worker reports why
                pending.append(item)
                hashes[item.id] = ""
            elif digest in known or digest in seen:
                duplicates += 1
                old = known.get(digest)
                if old is not None and old["id"] == old["path"] and not _exists(old["path"]) and _is_file(item):
                    self.store.update(old["id"], {"id": item.id, "path": item.image})
            else:
                pending.append(item)
                hashes[item.id] = digest
                seen.add(digest)
        return pending, hashes, duplicates

    def _image_row(self, item: Item, digest: str, embedding: list) -> dict[str, Any]:
        # A row re-reads its image from `path`: the file or URL itself, or the table / shard that holds it.
        path = item.image if isinstance(item.image, str) else _container(item.id)
        return {"id": item.id, "path": path, "hash": digest, "caption": item.text, "vector": embedding}

    def _write_failures(self, failures: list[dict[str, Any]]) -> None:
        path = self.directory / FAILURES
        path.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures), encoding="utf-8")

    def _refresh_ann(self) -> None:
        if self.store.has_ann():
            self.store.refresh_ann()
        elif self.store.count() >= ANN_MIN_ROWS:
            self.store.build_ann()


def _open_store(directory: Path, manifest: Manifest) -> Store:
    return open_store(directory / "store", manifest.columns, manifest.dim, manifest.queries)


def _as_list(inputs: str | os.PathLike | list) -> list[str]:
    return [str(i) for i in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]


def _absolute(spec: str) -> str:
    """Inputs as absolute paths, so that ids, and the paths images are re-read from, hold from any folder."""
    return spec if spec.startswith(("http://", "https://")) else os.path.abspath(spec)


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _content_hash(item: Item) -> str | None:
    """A hash of the image's bytes (a URL: of its address, which is not fetched twice); None if unreadable."""
    if isinstance(item.image, bytes):
        return _hash(item.image)
    if item.image.startswith(("http://", "https://")):
        return _hash(item.image.encode("utf-8"))
    try:
        return _hash(Path(item.image).read_bytes())
    except OSError:
        return None


def _is_file(item: Item) -> bool:
    return isinstance(item.image, str) and item.id == item.image and not item.image.startswith(("http://", "https://"))


def _exists(path: str) -> bool:
    return path.startswith(("http://", "https://")) or os.path.exists(path)


def _container(item_id: str) -> str:
    """The table or shard an item id (``TABLE:KEY``, ``SHARD/KEY``) comes from."""
    for suffix in (".csv:", ".parquet:", ".tar/"):
        if suffix in item_id:
            return item_id[: item_id.index(suffix) + len(suffix) - 1]
    return item_id


def _reread(rows: list[dict[str, Any]]) -> list[str | bytes]:
    """Each row's image again: a file or URL as it is, an image in a table or shard read from it."""
    images: dict[str, str | bytes] = {row["id"]: row["path"] for row in rows if row["id"] == row["path"]}
    containers = {row["path"] for row in rows if row["id"] != row["path"]}
    wanted = {row["id"] for row in rows}
    for container in containers:
        images.update({item.id: item.image for item in iter_items([container]) if item.id in wanted})
    return [images.get(row["id"], row["path"]) for row in rows]


def _id_filter(ids: list[str]) -> str:
    from blipkit.index.store import quote

    return f"id IN ({', '.join(quote(i) for i in ids)})"
