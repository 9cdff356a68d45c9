"""Where an index keeps its rows: the ``Store`` interface the index is written against, and LanceDB behind it.

A row is an id, metadata columns (strings) and a vector - or, for BLIP-2, one vector per query. The store keeps
them on disk, adds, deletes and updates rows, filters them by a SQL expression over the metadata, and hands every
vector over for exact search (``blipkit.index.search`` does that in torch: LanceDB's own flat scan is ~15x
slower, measured in ``bench/bench_index.py``). Past a size where exact search is too slow, ``nearest`` asks the
store's approximate index.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

TABLE = "items"
ANN_NAME = "vector_idx"  # LanceDB's name for an index on the "vector" column
PROBES_MIN = 32  # partitions probed at least: recall@10 >= 0.95 needs about a quarter of them (bench_index.py)
DELETE_CHUNK = 500  # ids per delete statement, so a large remove stays one short SQL expression each


class StoreError(ValueError):
    """A store that cannot be opened or asked (a bad filter, a damaged table): the message says which."""


class Store(Protocol):
    """What an index needs of its storage."""

    def add(self, rows: list[dict[str, Any]]) -> None: ...

    def delete(self, ids: Iterable[str]) -> None: ...

    def update(self, row_id: str, values: dict[str, str | None]) -> None: ...

    def rows(self, columns: list[str], where: str | None = None) -> list[dict[str, Any]]: ...

    def vectors(self) -> tuple[list[str], np.ndarray]: ...

    def count(self) -> int: ...

    def version(self) -> int: ...

    def build_ann(self) -> None: ...

    def refresh_ann(self) -> None: ...

    def has_ann(self) -> bool: ...

    def nearest(self, vector: np.ndarray, k: int, where: str | None = None) -> list[str]: ...

    def disk_bytes(self) -> int: ...


def quote(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


class LanceStore:
    """A LanceDB table in ``directory``: Arrow on disk like the jobs' Parquet, versioned appends and deletes (a
    killed writer leaves the last committed version), SQL filters, IVF indexes, and multi-vector columns for
    BLIP-2's queries."""

    def __init__(self, directory: Path, columns: tuple[str, ...], dim: int, queries: int) -> None:
        try:
            import lancedb
            import pyarrow as pa
        except ImportError:
            raise ImportError("an index needs LanceDB: pip install 'blipkit[index]'") from None
        self.columns, self.dim, self.queries = columns, dim, queries
        vector = pa.list_(pa.float32(), dim)
        if queries > 1:  # BLIP-2: one vector per query, as LanceDB's multi-vector type
            vector = pa.list_(vector)
        self._schema = pa.schema([("id", pa.string()), *((c, pa.string()) for c in columns), ("vector", vector)])
        # Read consistency 0: every read sees what another process (another `blipkit index add`) committed.
        self._db = lancedb.connect(directory, read_consistency_interval=timedelta(0))
        self.directory = directory
        if TABLE in self._db.list_tables().tables:
            self._table = self._db.open_table(TABLE)
        else:
            self._table = self._db.create_table(TABLE, schema=self._schema)

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Rows of ``id``, the metadata columns and ``vector`` (a list or array: (dim,), or (queries, dim))."""
        if not rows:
            return
        import pyarrow as pa

        # Column by column: the vectors as one float32 block, not a Python float at a time.
        vectors = np.asarray([row["vector"] for row in rows], dtype=np.float32).reshape(-1)
        vector = pa.FixedSizeListArray.from_arrays(pa.array(vectors), self.dim)
        if self.queries > 1:
            offsets = np.arange(0, len(rows) * self.queries + 1, self.queries, dtype=np.int32)
            vector = pa.ListArray.from_arrays(pa.array(offsets), vector)
        columns = {"id": [row["id"] for row in rows], **{c: [row.get(c) for row in rows] for c in self.columns}}
        self._table.add(pa.table({**columns, "vector": vector}, schema=self._schema))

    def delete(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for start in range(0, len(ids), DELETE_CHUNK):
            self._table.delete(f"id IN ({', '.join(quote(i) for i in ids[start : start + DELETE_CHUNK])})")

    def update(self, row_id: str, values: dict[str, str | None]) -> None:
        self._table.update(where=f"id = {quote(row_id)}", values=values)

    def rows(self, columns: list[str], where: str | None = None) -> list[dict[str, Any]]:
        query = self._table.search().select(columns).limit(None)
        if where:
            query = query.where(where)
        try:
            return query.to_arrow().to_pylist()
        except (ValueError, RuntimeError) as error:
            raise StoreError(_filter_error(where, self.columns, error)) from None

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every id and its vector: (rows, dim), or (rows, queries, dim) for multi-vector rows."""
        table = self._table.search().select(["id", "vector"]).limit(None).to_arrow()
        vectors = table["vector"].combine_chunks().flatten()
        if self.queries > 1:
            vectors = vectors.flatten()
        shape = (table.num_rows, self.queries, self.dim) if self.queries > 1 else (table.num_rows, self.dim)
        return table["id"].to_pylist(), vectors.to_numpy(zero_copy_only=False).reshape(shape)

    def count(self) -> int:
        return self._table.count_rows()

    def version(self) -> int:
        return self._table.version

    def build_ann(self) -> None:
        """An IVF index of √rows partitions holding int8 (scalar-quantized) vectors: a quarter the bytes to scan of
        IVF_FLAT, so more partitions are probed in the same time (measured in bench_index.py); what it proposes
        is re-scored exactly by the caller. Cosine: LanceDB's multi-vector index takes no other, and the vectors
        are normalized."""
        from lancedb.index import IvfSq

        config = IvfSq(distance_type="cosine", num_partitions=max(1, int(self.count() ** 0.5)))
        self._table.create_index("vector", config=config, name=ANN_NAME)  # with a config, the first is the column

    def refresh_ann(self) -> None:
        """Bring rows added since the index was built into it (its partitions stay; without it, LanceDB scans them
        apart, flat), once they are a tenth of the rows: a one-image add does not rewrite the index."""
        stats = self._table.index_stats(ANN_NAME)
        if stats is not None and stats.num_unindexed_rows * 10 >= stats.num_indexed_rows:
            self._table.optimize()

    def has_ann(self) -> bool:
        return any(index.index_type.startswith("Ivf") for index in self._table.list_indices())

    def nearest(self, vector: np.ndarray, k: int, where: str | None = None, probes: int | None = None) -> list[str]:
        """The ids of about the ``k`` nearest rows by the approximate index (a multi-vector row by its best vector),
        probing ``probes`` partitions (default: a quarter of them, at least 32)."""
        if probes is None:
            probes = max(PROBES_MIN, int(self.count() ** 0.5) // 4)
        query = (
            self._table.search(vector.astype(np.float32))
            .metric("cosine")
            .nprobes(probes)
            .limit(k)
            .select(["id", "_distance"])
        )
        if where:
            query = query.where(where, prefilter=True)
        try:
            return query.to_arrow()["id"].to_pylist()
        except (ValueError, RuntimeError) as error:
            raise StoreError(_filter_error(where, self.columns, error)) from None

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in Path(self.directory).rglob("*") if f.is_file())


def _filter_error(where: str | None, columns: tuple[str, ...], error: Exception) -> str:
    reason = str(error).strip().splitlines()[0]
    return f"cannot filter by {where!r}: {reason} (columns: id, {', '.join(columns)})"


def open_store(directory: str | os.PathLike, columns: tuple[str, ...], dim: int, queries: int) -> Store:
    """The default store: LanceDB in ``directory``."""
    return LanceStore(Path(directory), columns, dim, queries)
