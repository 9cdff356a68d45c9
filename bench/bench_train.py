"""A training step of full-size random BLIP-base captioning, blipkit against the reference (transformers).

    .venv/bin/python bench/bench_train.py              # fp32, bf16 and blipkit with gradient checkpointing
    .venv/bin/python bench/bench_train.py --steps 3    # fewer timed steps

The same batch (8 images at 384 px, 20-token captions after BLIP's prompt) through forward, backward (the language
modelling loss with BLIP's label smoothing, prompt masked) and a fused AdamW step, over every weight: blipkit's through
the ``finetune`` objective, the reference's through ``BlipForConditionalGeneration(labels=...)``. bf16 is mixed
precision (autocast over float32 weights) for both. Each measurement runs in a process of its own, so that its
peak resident memory (ru_maxrss) above the loaded model's is its own; processes alternate between the two
implementations, and the best steps/s of each is kept.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from bench_blip import checkpoint, print_machine

BATCH, TOKENS, IMAGE = 8, 20, 384


def batch() -> dict[str, torch.Tensor]:
    """Pixel values, [DEC]-led caption tokens and labels with the prompt's 4 tokens masked, as finetune builds them."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=generator)
    ids = torch.randint(1000, 30000, (BATCH, TOKENS), generator=generator)
    ids[:, 0], ids[:, -1] = 30522, 102  # [DEC] ... [SEP]
    labels = ids.clone()
    labels[:, :4] = -100
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def one(implementation: str, dtype: str, steps: int, checkpointing: bool) -> dict:
    """Run in a child process: load, warm up one step, then time ``steps`` steps."""
    path = checkpoint("blip-base", "caption")
    if implementation == "blipkit":
        import blipkit
        from blipkit.train.objectives import CaptionObjective

        model = blipkit.BlipForConditionalGeneration.from_pretrained(path)
        step_model = CaptionObjective(model)

        def loss_of(inputs):
            loss, _ = step_model(**inputs)
            return loss / int((inputs["labels"][:, 1:] != -100).sum())
    else:
        import transformers

        model = transformers.BlipForConditionalGeneration.from_pretrained(path)

        def loss_of(inputs):
            return model(**inputs).loss

    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    # Fused on both sides: what blipkit finetune runs and what transformers' Trainer defaults to (torch >= 2.8).
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05, fused=True)
    inputs = batch()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(inputs)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"samples_per_s": BATCH / min(times[1:]), "peak_mb": (peak - loaded_rss) / 1024, "loss": float(loss)}


def run_child(implementation: str, dtype: str, steps: int, checkpointing: bool) -> dict:
    command = [sys.executable, __file__, "--child", implementation, dtype, str(steps), str(int(checkpointing))]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process (default: 4)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation and row (default: 2)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        implementation, dtype, steps, checkpointing = args.child
        print(json.dumps(one(implementation, dtype, int(steps), checkpointing == "1")))
        return
    print_machine()
    checkpoint("blip-base", "caption")  # built once, before anything is timed
    print(f"BLIP-base captioning training step: batch {BATCH}, {IMAGE} px, {TOKENS} tokens, forward+backward+AdamW\n")
    print("| row | reference samples/s | blipkit samples/s | ratio | reference peak MB | blipkit peak MB |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = [("fp32", "float32", False), ("bf16 (autocast)", "bfloat16", False),
            ("fp32, gradient checkpointing", "float32", True)]  # fmt: skip
    for name, dtype, checkpointing in rows:
        best = {"reference": None, "blipkit": None}
        for _ in range(args.rounds):
            for implementation in best:
                result = run_child(implementation, dtype, args.steps, checkpointing)
                if best[implementation] is None or result["samples_per_s"] > best[implementation]["samples_per_s"]:
                    best[implementation] = result
        ref, ours = best["reference"], best["blipkit"]
        print(f"| {name} | {ref['samples_per_s']:.2f} | {ours['samples_per_s']:.2f} | "
              f"x{ours['samples_per_s'] / ref['samples_per_s']:.2f} | {ref['peak_mb']:.0f} | {ours['peak_mb']:.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
