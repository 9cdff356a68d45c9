"""``blipkit finetune caption|vqa|retrieval``: the command over ``blipkit.train.trainer.finetune``."""

from __future__ import annotations

import argparse
import json

from blipkit.arguments import count, positive
from blipkit.tasks import TASKS
from blipkit.train import TASK_OF


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "finetune",
        help="fine-tune a BLIP or BLIP-2 checkpoint",
        description="Fine-tune for captioning, VQA or retrieval; checkpoints in the Hugging Face layout. Under "
        "torchrun (torchrun --nproc-per-node N -m blipkit finetune ...) each process trains on its share.",
    )
    tasks = group.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, about in (
        ("caption", "captioning: the language-modelling loss on each caption after the prompt"),
        ("vqa", "visual question answering: the answer loss, weighted over the annotators' answers"),
        ("retrieval", "image-text retrieval: contrastive (ITC) plus matching (ITM) on hard negatives"),
    ):
        parser = tasks.add_parser(task, help=about, description=about)
        _options(parser, task)
        parser.set_defaults(handler=cmd_finetune)


def _options(parser: argparse.ArgumentParser, task: str) -> None:
    default = TASKS[TASK_OF[task]].default_model
    parser.add_argument("--model", default=default, help="Hub id or directory (default: %(default)s)")
    data = "JSONL/CSV/Parquet tables, webdataset shards, or folders of images with same-name .txt captions"
    parser.add_argument("--train", required=True, nargs="+", metavar="DATA", help=data)
    parser.add_argument("--val", nargs="+", metavar="DATA", help="held-out data, evaluated after each epoch")
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoints, final/, metrics.jsonl, plots")
    parser.add_argument("--epochs", type=positive, default=5, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive, default=8, help="examples per process and micro-batch")
    parser.add_argument("--grad-accum", type=positive, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--warmup-steps", type=count, default=0, help="linear warm-up, then cosine decay")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's (default: %(default)s)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="mixed precision: compute in this dtype over float32 weights")  # fmt: skip
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory")
    parser.add_argument("--freeze-vision", action="store_true", help="keep the image encoder as it is")
    parser.add_argument("--lora-rank", type=count, default=0, help="BLIP-2: LoRA of this rank on the language model")
    parser.add_argument("--seed", type=int, default=0, help="data order, dropout and sampling (default: 0)")
    parser.add_argument("--prompt", default=None, help="captioning prompt (default: BLIP 'a picture of ', BLIP-2 none)")
    parser.add_argument("--max-steps", type=positive, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--save-every", type=positive, default=None, help="steps between checkpoints (default: epochs)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    if task == "retrieval":
        parser.add_argument("--momentum", type=float, default=0.0,
                            help="BLIP's momentum distillation, e.g. 0.995 (default: off)")  # fmt: skip
        parser.add_argument("--queue-size", type=count, default=0, help="past momentum features used as negatives")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the run's summary as JSON")


def cmd_finetune(args: argparse.Namespace) -> int:
    from blipkit.train.trainer import FinetuneOptions, finetune

    options = FinetuneOptions(
        task=args.task, model=args.model, train=args.train, val=args.val, out=args.out, epochs=args.epochs,
        lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, dtype=args.dtype, device=args.device,
        gradient_checkpointing=args.gradient_checkpointing, freeze_vision=args.freeze_vision,
        lora_rank=args.lora_rank, seed=args.seed, prompt=args.prompt, max_steps=args.max_steps,
        save_every=args.save_every, resume=args.resume, momentum=getattr(args, "momentum", 0.0),
        queue_size=getattr(args, "queue_size", 0), progress=not args.no_progress,
    )  # fmt: skip
    result = finetune(options)
    summary = {"steps": result.steps, "final": str(result.final), "skipped": result.skipped}
    last = next((r for r in reversed(result.metrics) if "loss" in r), None)
    if last is not None:
        summary["loss"] = last["loss"]
    validation = next((r["val"] for r in reversed(result.metrics) if "val" in r), None)
    if validation is not None:
        summary["val"] = validation
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0
