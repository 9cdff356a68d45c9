"""Captioning img/s of the Keras classes (``blipkit.tf``) against blipkit's torch classes, on this CPU.

    .venv/bin/python bench/bench_tf.py                 # full-size random BLIP-base, batch 8, 384 px, 20 tokens
    .venv/bin/python bench/bench_tf.py --rounds 2 --batch 4
    KERAS_BACKEND=jax .venv/bin/python bench/bench_tf.py

The same random checkpoint (``bench_blip``'s), the same pixels, greedy with 20 forced new tokens (random weights
would otherwise stop at different lengths), float32 - the Keras classes compute in float32 only. Rows: blipkit torch,
Keras eager (op by op), Keras with ``jit_compile=True`` (the whole generate as one XLA program; its first call,
which compiles, is reported apart). The three run in one process, in alternating rounds, best time of each kept; the
ids of every row are checked equal to torch's before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_blip import checkpoint, print_machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import keras

    import blipkit
    from blipkit.tf import TFBlipForConditionalGeneration

    print_machine()
    threads = torch.get_num_threads()
    print(f"Keras {keras.__version__} on {keras.backend.backend()}, torch {torch.__version__} ({threads} threads); "
          f"batch {args.batch}, {args.tokens} new tokens, float32\n")  # fmt: skip
    path = checkpoint("blip-base", "caption")
    torch_model = blipkit.BlipForConditionalGeneration.from_pretrained(path)
    keras_model = TFBlipForConditionalGeneration.from_pretrained(path)
    pixels = np.random.default_rng(0).standard_normal((args.batch, 3, 384, 384)).astype(np.float32)
    settings = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens}

    def run_torch():
        with torch.inference_mode():
            return torch_model.generate(torch.from_numpy(pixels), **settings).numpy()

    def run_eager():
        return np.asarray(keras_model.generate(pixels, **settings))

    def run_xla():
        return np.asarray(keras_model.generate(pixels, jit_compile=True, **settings))

    start = time.perf_counter()
    expected = run_torch()
    compile_start = time.perf_counter()
    first_xla = run_xla()
    compile_s = time.perf_counter() - compile_start
    for name, ids in (("eager", run_eager()), ("xla", first_xla)):
        if not np.array_equal(ids, expected):
            raise SystemExit(f"Keras {name} ids differ from torch's: the rows below would compare different work")
    print(f"warm-up {time.perf_counter() - start:.1f} s (XLA's first call, compiling: {compile_s:.1f} s)\n")

    rows = {"blipkit torch": run_torch, "Keras eager": run_eager, "Keras XLA (jit_compile=True)": run_xla}
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(args.rounds):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    print("| implementation | s per batch | img/s | vs blipkit torch |")
    print("| --- | --- | --- | --- |")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.2f} | {args.batch / seconds:.2f} | x{best['blipkit torch'] / seconds:.2f} |")


if __name__ == "__main__":
    main()
