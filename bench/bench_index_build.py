"""Building an index against the embed job over the same images, in one process: the goal is the same img/s.

    .venv/bin/python bench/bench_index_build.py            # 32 images, float32

Full-size random BLIP-base ITM model (bench_blip's cached checkpoint, with a processor), the test photographs
repeated under distinct names; each run starts afresh (the index in a new folder, the job with overwrite).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench_blip import print_machine
from bench_capfilt import PHOTOS, with_processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    from blipkit import jobs
    from blipkit.index.index import Index

    print_machine()
    model = str(with_processor("itm"))
    work = Path(tempfile.mkdtemp(prefix="bench-index-build-"))
    try:
        images = work / "images"
        images.mkdir()
        for i in range(args.images):
            # Distinct bytes per copy (a trailing comment), so content dedup embeds every one, as embed does.
            data = PHOTOS[i % len(PHOTOS)].read_bytes()
            (images / f"{i:05d}{PHOTOS[i % len(PHOTOS)].suffix}").write_bytes(data + f"#{i}".encode())
        common = {"batch_size": args.batch_size, "dtype": args.dtype, "progress": False}
        started = time.perf_counter()
        summary = jobs.embed(images, work / "e.npy", model=model, overwrite=True, **common)
        embed_s = time.perf_counter() - started
        assert summary.done == args.images, summary
        started = time.perf_counter()
        index = Index.build(str(images), work / "photos.idx", model=model, **common)
        build_s = time.perf_counter() - started
        assert index.info()["count"] == args.images, index.info()
        print(f"{args.images} images, {args.dtype}, batch {args.batch_size}\n")
        print("| run | s | img/s |\n| --- | --- | --- |")
        print(f"| embed job | {embed_s:.1f} | {args.images / embed_s:.2f} |")
        print(f"| index build | {build_s:.1f} | {args.images / build_s:.2f} |")
        print(f"\nindex build img/s / embed job img/s = {embed_s / build_s:.2f} (goal: 1.00)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
