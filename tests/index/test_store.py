"""The LanceDB store: rows round-trip, filters, and the approximate index finds what exact search finds."""

from __future__ import annotations

import numpy as np
import pytest

from blipkit.index.store import StoreError, open_store


def vectors(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors, like embeddings of a photo collection."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim))
    x = centers[rng.integers(0, 20, rows)] + 0.5 * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_rows_vectors_filters(tmp_path):
    store = open_store(tmp_path, ("path",), 8, 3)  # three vectors a row, as BLIP-2's queries
    data = vectors(12, 8).reshape(4, 3, 8)
    store.add([{"id": f"r{i}", "path": f"/p/{i}.jpg", "vector": data[i].tolist()} for i in range(4)])
    ids, read = store.vectors()
    assert ids == ["r0", "r1", "r2", "r3"] and np.array_equal(read, data)
    store.delete(["r1", "it's"])
    store.update("r2", {"path": "/q/2.jpg"})
    assert store.rows(["id"], "path LIKE '/q/%'") == [{"id": "r2"}]
    assert open_store(tmp_path, ("path",), 8, 3).count() == 3  # what another process opening it sees
    with pytest.raises(StoreError, match="cannot filter by 'size > 3'.*columns: id, path"):
        store.rows(["id"], "size > 3")


@pytest.mark.parametrize("queries", [1, 4])
def test_approximate_index_recall(tmp_path, queries):
    """A row of several vectors (BLIP-2's queries) is found by its best one, as exact search scores it."""
    data = vectors(3000 * queries, 16).reshape((3000, queries, 16) if queries > 1 else (3000, 16))
    store = open_store(tmp_path, ("path",), 16, queries)
    store.add([{"id": str(i), "path": "", "vector": v} for i, v in enumerate(data)])
    store.build_ann()
    assert store.has_ann()
    found = 0
    for query in vectors(20, 16, seed=1):
        scores = data @ query if queries == 1 else (data @ query).max(axis=1)
        found += len(set(np.argsort(-scores)[:10].astype(str)) & set(store.nearest(query, 10)))
    assert found / (10 * 20) >= 0.9


def test_rows_added_after_the_index_are_found(tmp_path):
    data = vectors(2000, 16)
    store = open_store(tmp_path, ("path",), 16, 1)
    store.add([{"id": str(i), "path": "", "vector": v} for i, v in enumerate(data)])
    store.build_ann()
    later = vectors(300, 16, seed=2)
    store.add([{"id": f"new{i}", "path": "", "vector": v} for i, v in enumerate(later)])
    store.refresh_ann()  # a sixth of the rows are new: they join the index
    assert store._table.index_stats("vector_idx").num_unindexed_rows == 0
    assert store.nearest(later[7], 1) == ["new7"]
