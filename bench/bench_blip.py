"""Side-by-side speed of blipkit and the reference (transformers) on full-size BLIP shapes, in one process.

    .venv/bin/python bench/bench_blip.py                 # the default table
    .venv/bin/python bench/bench_blip.py --rows caption-greedy-bf16 --rounds 3

Random full-size checkpoints (speed does not depend on the weights' values) are built once with the reference
and cached in bench/.cache. Each row runs the same inputs through both implementations in alternating rounds and
keeps the best round of each. Generation is fixed-length (min_new_tokens = max_new_tokens) so both do the same
work. The last columns put blipkit's useful matrix arithmetic against this machine's measured matmul peak.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE = Path(__file__).parent / ".cache"
SIZES = {
    # The reference's default BlipConfig is blip-base at 384 px.
    "blip-base": {},
    "blip-large": {
        "vision_config": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
        },  # fmt: skip
        "text_config": {"hidden_size": 768, "num_hidden_layers": 12},
    },
}
CLASSES = {"caption": "BlipForConditionalGeneration", "vqa": "BlipForQuestionAnswering",
           "itm": "BlipForImageTextRetrieval"}  # fmt: skip


@dataclass(frozen=True)
class Row:
    name: str
    size: str
    task: str
    dtype: torch.dtype
    batch: int
    beams: int = 1
    tokens: int = 20
    quantize: str | None = None  # blipkit only: the reference runs the same row unquantised


ROWS = [
    Row("caption-greedy-bf16", "blip-base", "caption", torch.bfloat16, 8),
    Row("caption-beam3-bf16", "blip-base", "caption", torch.bfloat16, 8, beams=3),
    Row("caption-greedy-fp32", "blip-base", "caption", torch.float32, 8),
    Row("vqa-greedy-bf16", "blip-base", "vqa", torch.bfloat16, 8, tokens=5),
    Row("itm-bf16", "blip-base", "itm", torch.bfloat16, 8, tokens=0),
    Row("caption-greedy-fp32-large", "blip-large", "caption", torch.float32, 8),
    Row("caption-greedy-bf16-large", "blip-large", "caption", torch.bfloat16, 8),
    Row("caption-greedy-bf16-int8", "blip-base", "caption", torch.bfloat16, 8, quantize="int8"),
]


def checkpoint(size: str, task: str) -> Path:
    path = CACHE / f"{size}-{task}"
    if not (path / "config.json").exists():
        import transformers

        config = transformers.BlipConfig(**SIZES[size])
        torch.manual_seed(0)
        model = getattr(transformers, CLASSES[task])(config)
        model.save_pretrained(path)
    return path


def inputs(row: Row, dtype: torch.dtype) -> dict:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(row.batch, 3, 384, 384, generator=generator).to(dtype)
    question = torch.tensor([[101, 2129, 2116, 6077, 2024, 2045, 1029, 102]]).repeat(row.batch, 1)
    if row.task == "caption":
        return {"pixel_values": pixels}
    return {"pixel_values": pixels, "input_ids": question, "attention_mask": torch.ones_like(question)}


def work(model, row: Row, batch: dict):
    with torch.inference_mode():
        if row.task == "itm":
            return model(**batch).itm_score
        return model.generate(
            **batch, num_beams=row.beams, max_new_tokens=row.tokens, min_new_tokens=row.tokens, do_sample=False
        )


def best_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in this dtype: the practical ceiling for this machine."""
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    a @ b
    seconds = best_time(lambda: a @ b, 5)
    return 2 * 2048**3 / seconds


def useful_flops(model, row: Row) -> float:
    """Matrix FLOPs the task needs: 2 x parameters touched x tokens through them (vision, text, decoding)."""
    vision = sum(p.numel() for p in model.vision_model.parameters())
    patches = (384 // 16) ** 2 + 1
    total = 2 * vision * patches * row.batch
    text = getattr(model, "text_decoder", None) or model.text_encoder
    text_params = sum(p.numel() for n, p in text.named_parameters() if "word_embeddings" not in n)
    rows = row.batch * row.beams
    total += 2 * text_params * rows * max(row.tokens, 8)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=[r.name for r in ROWS], choices=[r.name for r in ROWS])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print_machine()
    peaks: dict = {}
    print(
        "| task | dtype | batch | beams | reference img/s | blipkit img/s | ratio | peak GFLOP/s | blipkit % of peak |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in (r for r in ROWS if r.name in args.rows):
        print(measure(row, args.rounds, peaks), flush=True)


def print_machine() -> None:
    """Which CPU this is and the form each product and attention takes on it (``blipkit info --speed``): a figure
    without its CPU class is not a figure."""
    from blipkit.info import speed_choices

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    model = model or platform.processor()
    print(f"CPU: {model}")
    for what, form in speed_choices().items():
        print(f"- {what}: {form}")
    print()


def measure(row: Row, rounds: int, peaks: dict) -> str:
    import transformers

    import blipkit

    path = checkpoint(row.size, row.task)
    reference = getattr(transformers, CLASSES[row.task]).from_pretrained(path, dtype=row.dtype).eval()
    # As serve and the batch jobs load them: a bf16 decoder's weights packed where bf16 is native
    # (BLIPKIT_PACKED_WEIGHTS=0 measures them dense).
    ours = getattr(blipkit, CLASSES[row.task]).from_pretrained(
        path, dtype=row.dtype, quantize=row.quantize, pack_weights=True
    )
    batch = inputs(row, row.dtype)
    work(reference, row, batch), work(ours, row, batch)  # warm up both
    ref_times, our_times = [], []
    for _ in range(rounds):  # alternate, so drifting machine load hits both alike
        ref_times.append(best_time(lambda: work(reference, row, batch), 1))
        our_times.append(best_time(lambda: work(ours, row, batch), 1))
    ref_rate, our_rate = row.batch / min(ref_times), row.batch / min(our_times)
    if row.dtype not in peaks:  # the machine's best: bf16 products may run fastest in float32 (see layers.linear)
        peaks[row.dtype] = max(matmul_peak(row.dtype), matmul_peak(torch.float32))
    fraction = useful_flops(ours, row) / min(our_times) / peaks[row.dtype]
    dtype = str(row.dtype).removeprefix("torch.") + (f" ({row.quantize} for blipkit)" if row.quantize else "")
    return (
        f"| {row.name} | {dtype} | {row.batch} | {row.beams} | {ref_rate:.2f} | {our_rate:.2f} | "
        f"x{our_rate / ref_rate:.2f} | {peaks[row.dtype] / 1e9:.0f} | {100 * fraction:.0f}% |"
    )


if __name__ == "__main__":
    main()
