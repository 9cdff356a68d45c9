"""CapFilt's cost against what it replaces: the caption job plus the match job over the same images, in one process.

    .venv/bin/python bench/bench_capfilt.py              # 32 images, float32
    .venv/bin/python bench/bench_capfilt.py --images 16 --dtype bfloat16

Full-size random BLIP-base captioner and ITM model (bench_blip's cached checkpoints, with a processor beside each):
speed does not depend on the weights' values, and random weights never end a caption early, so every caption is
--tokens long in all three jobs. The images are the test photographs, repeated; they carry no web caption, so
CapFilt scores one synthetic caption per image, as the match job scores one text. Goal: CapFilt's time at most
the caption job's plus the match job's (it decodes each image once, for both models).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from bench_blip import checkpoint, print_machine

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "tests" / "fixtures" / "images").iterdir())
VOCAB = ROOT / "tests" / "fixtures" / "bert-base-uncased-vocab.txt"


def with_processor(task: str) -> Path:
    """bench_blip's random full-size BLIP-base checkpoint for ``task``, with a processor (384 px, BERT's vocab)."""
    from blipkit import BlipImageProcessor, BlipProcessor, BlipTokenizer

    path = checkpoint("blip-base", task)
    if not (path / "preprocessor_config.json").exists():
        BlipProcessor(BlipImageProcessor(), BlipTokenizer.from_vocab(VOCAB)).save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    from blipkit import jobs

    print_machine()
    captioner, matcher = with_processor("caption"), with_processor("itm")
    work = Path(tempfile.mkdtemp(prefix="bench-capfilt-"))
    try:
        images = work / "images"
        images.mkdir()
        for i in range(args.images):
            photo = PHOTOS[i % len(PHOTOS)]
            shutil.copy(photo, images / f"{i:05d}{photo.suffix}")
        common = {"batch_size": args.batch_size, "dtype": args.dtype, "progress": False, "overwrite": True}
        runs = {
            "caption job": lambda: jobs.caption(
                images,
                work / "c.jsonl",
                model=str(captioner),
                do_sample=True,
                top_p=0.9,
                top_k=0,
                max_new_tokens=args.tokens,
                **common,
            ),  # fmt: skip
            "match job": lambda: jobs.match(images, work / "m.jsonl", model=str(matcher), text="a picture", **common),
            "capfilt job": lambda: jobs.capfilt(
                images,
                work / "f.jsonl",
                captioner=str(captioner),
                filter=str(matcher),
                max_new_tokens=args.tokens,
                **common,
            ),  # fmt: skip
        }
        seconds = {}
        for name, run in runs.items():
            started = time.perf_counter()
            summary = run()
            seconds[name] = time.perf_counter() - started
            assert summary.done == args.images, summary
        print(f"{args.images} images, {args.dtype}, batch {args.batch_size}, {args.tokens}-token captions\n")
        print("| job | s | img/s |\n| --- | --- | --- |")
        for name, s in seconds.items():
            print(f"| {name} | {s:.1f} | {args.images / s:.2f} |")
        both = seconds["caption job"] + seconds["match job"]
        print(f"\ncapfilt / (caption + match) = {seconds['capfilt job'] / both:.2f} (goal: <= 1.00)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
