"""blipkit against the reference on one GPU, in one process: captioning img/s and BLIP-2's decode bandwidth.

    .venv/bin/python bench/bench_gpu.py                       # on a CUDA machine: the full table, < 8 minutes
    .venv/bin/python bench/bench_gpu.py --device cpu --tiny   # a dry run of the same code on tiny shapes

Rows: BLIP-base captioning (384 px, 20 forced tokens) in fp16 and bf16 at batch 1, 8, 64 and 256; BLIP-2 with
blip2-opt-2.7b's shapes in fp16 and bf16 at batch 1 and 16 (a 20-token caption after a short prompt). Random
weights (speed does not depend on their values) are made on the device by the reference, saved, and loaded by
both. Each row alternates the two implementations and keeps each one's best round. For BLIP-2 at batch 1 the
decode rate is also given against the device's memory bandwidth (measured here with a large copy): each token
reads every language-model weight once.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

BLIP_BATCHES = (1, 8, 64, 256)
BLIP2_BATCHES = (1, 16)
TOKENS = 20
OPT_2_7B = {"model_type": "opt", "hidden_size": 2560, "num_hidden_layers": 32, "ffn_dim": 10240,
            "num_attention_heads": 32, "vocab_size": 50304, "word_embed_proj_dim": 2560}  # fmt: skip
TINY_BLIP = {"text_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                             "num_attention_heads": 4},
             "vision_config": {"hidden_size": 48, "intermediate_size": 56, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "image_size": 32, "patch_size": 8}}  # fmt: skip
TINY_BLIP2 = {"vision_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "image_size": 28, "patch_size": 7},
              "qformer_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                 "intermediate_size": 37, "encoder_hidden_size": 32},
              "text_config": {"model_type": "opt", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
                              "ffn_dim": 37, "num_attention_heads": 4, "word_embed_proj_dim": 32}}  # fmt: skip
IMAGE_TOKEN = 50265


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, rounds: int, device: torch.device) -> float:
    times = []
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    source = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = best_of(lambda: target.copy_(source), 5, device)
    return 2 * source.numel() / seconds


def save_random(class_name: str, config, directory: Path, dtype: torch.dtype, device: torch.device) -> None:
    import transformers

    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, class_name)(config).to(dtype)
    model.save_pretrained(directory)


def load_both(class_name: str, directory: Path, dtype: torch.dtype, device: torch.device):
    import transformers

    import blipkit

    reference = getattr(transformers, class_name).from_pretrained(directory, dtype=dtype).to(device).eval()
    ours = getattr(blipkit, class_name).from_pretrained(directory, dtype=dtype, device=device)
    return reference, ours


def generate(model, inputs: dict, tokens: int):
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)


def side_by_side(reference, ours, inputs: dict, rounds: int, device: torch.device, tokens: int = TOKENS):
    generate(reference, inputs, tokens), generate(ours, inputs, tokens)  # warm up (kernels, allocator, graphs)
    ref_times, our_times = [], []
    for _ in range(rounds):
        ref_times.append(best_of(lambda: generate(reference, inputs, tokens), 1, device))
        our_times.append(best_of(lambda: generate(ours, inputs, tokens), 1, device))
    return min(ref_times), min(our_times)


def blip_rows(args, device: torch.device, workdir: Path):
    import transformers

    size = 32 if args.tiny else 384
    config = transformers.BlipConfig(**(TINY_BLIP if args.tiny else {}))
    for dtype in (torch.float16, torch.bfloat16):
        directory = workdir / f"blip-{dtype}"
        save_random("BlipForConditionalGeneration", config, directory, dtype, device)
        reference, ours = load_both("BlipForConditionalGeneration", directory, dtype, device)
        for batch in BLIP_BATCHES:
            pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            ref_s, our_s = side_by_side(reference, ours, {"pixel_values": pixels}, args.rounds, device)
            print(f"| caption blip-base | {str(dtype)[6:]} | {batch} | {batch / ref_s:.1f} | {batch / our_s:.1f} | "
                  f"x{ref_s / our_s:.2f} | - |", flush=True)  # fmt: skip
        del reference, ours
        if device.type == "cuda":
            torch.cuda.empty_cache()


def blip2_rows(args, device: torch.device, workdir: Path, bandwidth: float):
    import transformers

    if args.tiny:
        config = transformers.Blip2Config(**TINY_BLIP2, num_query_tokens=4, image_token_index=98)
        size, image_token, queries = 28, 98, 4
    else:
        config = transformers.Blip2Config(text_config=OPT_2_7B, num_query_tokens=32, image_token_index=IMAGE_TOKEN)
        size, image_token, queries = 224, IMAGE_TOKEN, 32
    for dtype in (torch.float16, torch.bfloat16):
        directory = workdir / f"blip2-{dtype}"
        save_random("Blip2ForConditionalGeneration", config, directory, dtype, device)
        reference, ours = load_both("Blip2ForConditionalGeneration", directory, dtype, device)
        lm_bytes = sum(p.numel() * p.element_size() for p in ours.language_model.parameters())
        for batch in BLIP2_BATCHES:
            prompt = torch.tensor([[image_token] * queries + [2, 24, 35, 59, 16, 11, 42, 35]], device=device)
            pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
            ids = prompt.repeat(batch, 1)
            inputs = {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
            ref_s, our_s = side_by_side(reference, ours, inputs, args.rounds, device)
            note = "-"
            if batch == 1:  # decode rate: 20 tokens against 1, the difference is 19 decode steps
                ref_1, our_1 = side_by_side(reference, ours, inputs, args.rounds, device, tokens=1)
                ours_tps = (TOKENS - 1) / (our_s - our_1)
                ref_tps = (TOKENS - 1) / (ref_s - ref_1)
                share = ours_tps * lm_bytes / bandwidth
                note = f"decode {ours_tps:.0f} tok/s ({100 * share:.0f}% of bandwidth; reference {ref_tps:.0f})"
            print(f"| blip2-opt-2.7b | {str(dtype)[6:]} | {batch} | {batch / ref_s:.2f} | {batch / our_s:.2f} | "
                  f"x{ref_s / our_s:.2f} | {note} |", flush=True)  # fmt: skip
        del reference, ours
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a dry run of the script itself")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=["blip", "blip2"])
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bandwidth = memory_bandwidth(device)
    print(f"device: {name}; torch {torch.__version__}; measured copy bandwidth {bandwidth / 1e9:.0f} GB/s\n")
    print("| row | dtype | batch | reference img/s | blipkit img/s | ratio | notes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as workdir:
        if args.only in (None, "blip"):
            blip_rows(args, device, Path(workdir))
        if args.only in (None, "blip2"):
            blip2_rows(args, device, Path(workdir), bandwidth)


if __name__ == "__main__":
    main()
