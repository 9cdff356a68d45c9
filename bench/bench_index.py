"""Search speed of blipkit.Index's store, on synthetic embeddings: exact top-10 (torch, over the store's vectors) and
the approximate index (LanceDB IVF_SQ, candidates re-scored exactly) with its recall@10 against exact search.

    .venv/bin/python bench/bench_index.py                  # 100k x 256 exact, 1M x 256 approximate
    .venv/bin/python bench/bench_index.py --ann-rows 200000 --queries 50

Goals (issue #17): exact top-10 over 100k x 256 in < 50 ms on 2 cores; 1M in < 20 ms at recall@10 >= 0.95.
Speed does not depend on what the vectors mean, but an approximate index's recall does: the vectors are clustered
unit vectors (10,000 centres, noise as large as a centre), as embeddings of a photo collection are, not uniform
noise (on which no partitioning helps); with fewer, tighter clusters (--centres 1000) every setting finds all 10.
Queries come from the same distribution.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_blip import print_machine

from blipkit.index.index import ANN_CANDIDATES
from blipkit.index.search import similarities, top_k
from blipkit.index.store import PROBES_MIN, open_store

DIM = 256
CHUNK = 100_000  # rows written to the store at a time


def clustered(rows: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), rows)] + rng.standard_normal((rows, centres.shape[1]), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, repeats: int) -> tuple[list[float], list]:
    """Milliseconds of each call of ``fn(i)`` after one warm-up call, and what each returned."""
    fn(0)
    times, results = [], []
    for i in range(repeats):
        start = time.perf_counter()
        results.append(fn(i))
        times.append((time.perf_counter() - start) * 1000)
    return times, results


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    return f"median {statistics.median(times):6.2f} ms, p95 {ordered[int(0.95 * (len(ordered) - 1))]:6.2f} ms"


def exact(rows: int, queries: int, rng: np.random.Generator, centres: np.ndarray) -> None:
    vectors = torch.from_numpy(clustered(rows, rng, centres))
    qs = torch.from_numpy(clustered(queries, rng, centres))
    times, _ = timed(lambda i: top_k(similarities(vectors, qs[i]), 10), queries)
    print(f"exact top-10, {rows:,} x {DIM} (torch, {torch.get_num_threads()} threads): {summary(times)}")
    blip2 = torch.from_numpy(clustered(rows // 32 * 32, rng, centres)).reshape(rows // 32, 32, DIM)
    times, _ = timed(lambda i: top_k(similarities(blip2, qs[i]), 10), queries)
    print(f"exact top-10, {rows // 32:,} BLIP-2 images x 32 queries x {DIM} (best query): {summary(times)}")


def lance_flat(rows: int, queries: int, rng: np.random.Generator, centres: np.ndarray, work: Path) -> None:
    store = open_store(work / "flat", ("path",), DIM, 1)
    data = clustered(rows, rng, centres)
    store.add([{"id": str(i), "path": "", "vector": v} for i, v in enumerate(data)])
    qs = clustered(queries, rng, centres)
    times, _ = timed(lambda i: store.nearest(qs[i], 10), min(queries, 20))
    print(f"LanceDB's own flat scan (no index), {rows:,} x {DIM}: {summary(times)}")


def approximate(rows: int, queries: int, rng: np.random.Generator, centres: np.ndarray, work: Path) -> None:
    store = open_store(work / "ann", ("path",), DIM, 1)
    data = clustered(rows, rng, centres)
    start = time.perf_counter()
    for first in range(0, rows, CHUNK):
        store.add([{"id": str(first + i), "path": "", "vector": v} for i, v in enumerate(data[first : first + CHUNK])])
    written = time.perf_counter() - start
    start = time.perf_counter()
    store.build_ann()
    built = time.perf_counter() - start
    print(f"approximate, {rows:,} x {DIM}: written in {written:.1f} s, IVF_SQ ({int(rows**0.5)} partitions) built "
          f"in {built:.1f} s")  # fmt: skip
    matrix = torch.from_numpy(data)
    qs = clustered(queries, rng, centres)
    truth = [set(top_k(similarities(matrix, torch.from_numpy(q)), 10)[0]) for q in qs]

    def recall(found: list[list[int]]) -> float:
        return sum(len(set(f) & t) for f, t in zip(found, truth, strict=True)) / (10 * queries)

    for probes in (64, 128, 256):
        times, found = timed(lambda i, p=probes: [int(x) for x in store.nearest(qs[i], 10, probes=p)], queries)
        print(f"  LanceDB top-10, {probes:2d} probes: {summary(times)}, recall@10 {recall(found):.3f}")

    def refined(i: int) -> list[int]:
        # What Index.search does past ANN_MIN_ROWS: ask for k x ANN_CANDIDATES, score those exactly.
        candidates = [int(x) for x in store.nearest(qs[i], 10 * ANN_CANDIDATES)]
        best, _ = top_k(similarities(matrix.index_select(0, torch.tensor(candidates)), torch.from_numpy(qs[i])), 10)
        return [candidates[b] for b in best]

    times, found = timed(refined, queries)
    probes = max(PROBES_MIN, int(rows**0.5) // 4)
    print(f"  Index.search's path ({probes} probes, {10 * ANN_CANDIDATES} candidates re-scored): {summary(times)}, "
          f"recall@10 {recall(found):.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact-rows", type=int, default=100_000)
    parser.add_argument("--ann-rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--centres", type=int, default=10_000, help="clusters of the synthetic vectors")
    args = parser.parse_args()

    print_machine()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.centres, DIM), dtype=np.float32)
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        exact(args.exact_rows, args.queries, rng, centres)
        lance_flat(args.exact_rows, args.queries, rng, centres, work)
        approximate(args.ann_rows, args.queries, rng, centres, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
