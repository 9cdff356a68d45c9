"""BLIP-2 OPT-2.7b, batch 1, bfloat16: peak memory and time from a cold process to the first caption.

    .venv/bin/python bench/bench_blip2.py               # blipkit and the reference, one fresh process each
    .venv/bin/python bench/bench_blip2.py --only blipkit blipkit-int8
    .venv/bin/python bench/bench_blip2.py --alternate blipkit --rounds 3   # warm, both in one process

A random checkpoint with blip2-opt-2.7b's shapes (7.75 GB in bfloat16, sharded as the Hub's are) is built once in
bench/.cache. Each implementation then runs in its own fresh Python process - so its peak RSS is its own - which
imports torch, loads the checkpoint in bfloat16, and generates a 20-token caption (fixed length: both do the same
work) after a "Question: ... Answer:" prompt. Printed: load time, time to the first caption (from process start,
imports included), the caption's own time (the first ``generate`` call: ViT-g, Q-Former, prompt, 20 decode steps)
and its speed-up over the reference's, the best of WARM_CAPTIONS more captions in the same process and its speed-up,
peak RSS, and peak RSS over the size of the weights in memory.
"blipkit-int8" loads the same checkpoint with quantize="int8" (its load time includes quantising); "blipkit-dense"
keeps the decoder's bf16 weights unpacked (BLIPKIT_PACKED_WEIGHTS=0), as the reference holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(__file__).parent / ".cache" / "blip2-opt-2.7b"
IMPLEMENTATIONS = ("reference", "blipkit", "blipkit-dense", "blipkit-int8")
WARM_CAPTIONS = 2
IMAGE_TOKEN = 50265
OPT_2_7B = {"model_type": "opt", "hidden_size": 2560, "num_hidden_layers": 32, "ffn_dim": 10240,
            "num_attention_heads": 32, "vocab_size": 50304, "word_embed_proj_dim": 2560}  # fmt: skip

CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
import torch
implementation, path, image_token = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = {"quantize": "int8"} if implementation == "blipkit-int8" else {}
if implementation.startswith("blipkit"):
    import blipkit as library
else:
    import transformers as library
model = library.Blip2ForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16, **options).eval()
loaded = time.perf_counter() - start
pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
prompt = [image_token] * 32 + [2, 24361, 35, 99, 16, 11, 42, 116, 31652, 35]  # </s>Question: what is in this? Answer:
ids = torch.tensor([prompt])
def caption():
    with torch.inference_mode():
        return model.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                              max_new_tokens=20, min_new_tokens=20, do_sample=False)
out = caption()
total = time.perf_counter() - start
warm = []
for _ in range(int(sys.argv[4])):
    begin = time.perf_counter()
    caption()
    warm.append(time.perf_counter() - begin)
weights = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
    b.numel() * b.element_size() for b in model.buffers())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"load_s": loaded, "first_caption_s": total, "warm_caption_s": min(warm), "peak_rss": peak,
                  "weights": weights,
                  "new_tokens": out.shape[1] - ids.shape[1]}))
"""


def build_checkpoint() -> Path:
    """Random bf16 weights with blip2-opt-2.7b's shapes, saved by blipkit in the reference's layout."""
    if (CACHE / "config.json").exists():
        return CACHE
    import torch

    import blipkit

    config = blipkit.Blip2Config.from_dict(
        {"text_config": OPT_2_7B, "num_query_tokens": 32, "image_token_index": IMAGE_TOKEN}
    )
    with torch.device("meta"):
        model = blipkit.Blip2ForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            values = torch.empty(param.shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=generator)
            if name == "weight" and param.ndim == 1:  # layer norms near one keep activations in range
                values += 1
            setattr(module, name, torch.nn.Parameter(values, requires_grad=False))
    model.save_pretrained(CACHE, max_shard_size="2GB")
    return CACHE


def run(implementation: str, path: Path) -> dict:
    # blipkit-dense: the bf16 decoder's weights as the reference holds them, not packed (see linear.pack_linears)
    env = {**os.environ, "BLIPKIT_PACKED_WEIGHTS": "0" if implementation == "blipkit-dense" else "1"}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, implementation, str(path), str(IMAGE_TOKEN), str(WARM_CAPTIONS)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{implementation} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def alternate(implementation: str, path: Path, rounds: int) -> None:
    """Warm captions of the reference and one blipkit implementation, loaded in this process, in alternating
    rounds: the machine's drift between fresh processes (20% on a shared VM) then hits both alike."""
    import time

    import torch
    import transformers

    import blipkit

    options = {"quantize": "int8"} if implementation == "blipkit-int8" else {}
    options |= {"pack_weights": implementation != "blipkit-dense"}
    models = {
        "reference": transformers.Blip2ForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16).eval(),
        implementation: blipkit.Blip2ForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16, **options),
    }
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    ids = torch.tensor([[IMAGE_TOKEN] * 32 + [2, 24361, 35, 99, 16, 11, 42, 116, 31652, 35]])
    times: dict[str, list[float]] = {name: [] for name in models}
    outputs = {}
    for _ in range(rounds + 1):  # the first round warms both up
        for name, model in models.items():
            start = time.perf_counter()
            with torch.inference_mode():
                outputs[name] = model.generate(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                                               max_new_tokens=20, min_new_tokens=20, do_sample=False)  # fmt: skip
            times[name].append(time.perf_counter() - start)
    print("| implementation | warm captions s | best s | vs reference |")
    print("| --- | --- | --- | --- |")
    for name, measured in times.items():
        ratio = min(times["reference"][1:]) / min(measured[1:])
        rounded = ", ".join(f"{t:.1f}" for t in measured[1:])
        print(f"| {name} | {rounded} | {min(measured[1:]):.1f} | x{ratio:.2f} |")
    same = torch.equal(outputs["reference"], outputs[implementation])
    print(f"same ids: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS)
    parser.add_argument("--alternate", choices=IMPLEMENTATIONS[1:], help="warm, in one process, against the reference")
    parser.add_argument("--rounds", type=int, default=3, help="with --alternate")
    args = parser.parse_args()
    path = build_checkpoint()
    from bench_blip import print_machine

    print_machine()
    if args.alternate:
        alternate(args.alternate, path, args.rounds)
        return
    print(
        "| implementation | load s | first caption s | caption s | vs reference | warm caption s | vs reference "
        "| peak RSS GB | weights GB | peak / weights |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    reference_caption = reference_warm = None
    for implementation in args.only or IMPLEMENTATIONS:
        r = run(implementation, path)
        assert r["new_tokens"] == 20, r
        caption = r["first_caption_s"] - r["load_s"]
        if implementation == "reference":
            reference_caption, reference_warm = caption, r["warm_caption_s"]
        speedup = f"x{reference_caption / caption:.2f}" if reference_caption else "-"
        warm_speedup = f"x{reference_warm / r['warm_caption_s']:.2f}" if reference_warm else "-"
        print(
            f"| {implementation} | {r['load_s']:.1f} | {r['first_caption_s']:.1f} | {caption:.1f} | {speedup} | "
            f"{r['warm_caption_s']:.1f} | {warm_speedup} | {r['peak_rss'] / 1e9:.2f} | {r['weights'] / 1e9:.2f} | "
            f"{r['peak_rss'] / r['weights']:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
