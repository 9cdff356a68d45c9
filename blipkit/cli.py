"""The ``blipkit`` command: caption, ask, match, embed, capfilt, serve, index, search, eval and info.

Exit codes: 0 done, 2 usage error (argparse), 1 failure - reported in one line, without a traceback - and, for a
batch job (--out), 3 when every image it processed failed (0 if some succeeded, or if all were already done).
Heavy imports wait until the arguments are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blipkit.arguments import count, engine_options, positive, runtime_options
from blipkit.tasks import TASKS

PROGRESS_THRESHOLD = 4  # show a progress bar from this many images on
# Inputs only a batch job reads (blipkit.jobs.sources), by what they are, and what each command's job does to them.
COLLECTION_SUFFIXES = {
    ".txt": "a list of images",
    ".jsonl": "a table",
    ".csv": "a table",
    ".parquet": "a table",
    ".tar": "a webdataset shard",
}
JOB_ACTIONS = {"caption": "caption", "ask": "answer the question for", "match": "score"}
JOB_COMMANDS = ("caption", "ask", "match", "embed")  # with --out, run through jobs.run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blipkit", description="BLIP captions, answers and image-text scores.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    caption = commands.add_parser(
        "caption",
        help="caption images",
        description="Caption images. With --out, a resumable batch job over folders, globs, lists, tables or shards.",
    )
    caption.add_argument("images", nargs="+", metavar="IMAGE", help="images; with --out also folders, globs, ...")
    caption.add_argument("--prompt", help='text the caption continues, e.g. "a picture of"')
    _generation_options(caption)
    _model_options(caption, "image-to-text")
    _job_options(caption)

    ask = commands.add_parser("ask", help="answer a question about an image", description="Visual question answering.")
    ask.add_argument("image", metavar="IMAGE", help="an image; with --out also a folder, glob, list, table or shard")
    ask.add_argument("question", metavar="QUESTION")
    _generation_options(ask)
    _model_options(ask, "visual-question-answering")
    _job_options(ask)

    match = commands.add_parser(
        "match",
        help="score how well texts match an image",
        description="Image-text matching: ITM probability (match) and ITC cosine similarity for each text. With "
        "--out, scores every image of INPUT against its own caption (a caption/text column, a .txt in a "
        "webdataset shard) or against --text.",
    )
    match.add_argument("image", metavar="IMAGE", help="an image; with --out also a folder, glob, list, table or shard")
    match.add_argument("texts", nargs="*", metavar="TEXT")
    match.add_argument("--text", dest="job_text", help="with --out: the text every image is matched against")
    _model_options(match, "image-text-matching")
    _job_options(match)

    embed = commands.add_parser(
        "embed", help="image embeddings for a collection", description="ITC image embeddings, normalized (a job)."
    )
    embed.add_argument("images", nargs="+", metavar="INPUT", help="images, folders, globs, lists, tables or shards")
    _model_options(embed, "image-embedding")
    _job_options(embed, required=True)

    capfilt = commands.add_parser(
        "capfilt",
        help="bootstrap a clean captioned data set from noisy web pairs (BLIP's CapFilt)",
        description="For every image: synthetic captions by nucleus sampling, each caption (and the web caption from a "
        "caption/text column or a shard's .txt) scored by the filter's ITM head and ITC, and kept or removed. A "
        "resumable job; --out DIR/ writes the kept pairs as webdataset shards.",
    )
    capfilt.add_argument("images", nargs="+", metavar="INPUT", help="images, folders, globs, lists, tables or shards")
    capfilt.add_argument("--captioner", default=TASKS["image-to-text"].default_model, help="captioning model")
    capfilt.add_argument("--filter", default=TASKS["image-text-matching"].default_model, help="ITM model")
    capfilt.add_argument("--captions-per-image", type=count, default=1, help="synthetic captions (default: 1)")
    capfilt.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling's p (default: %(default)s)")
    capfilt.add_argument("--max-new-tokens", type=positive, default=30, help="longest caption (default: 30)")
    capfilt.add_argument("--prompt", default="a picture of ", help="text captions continue (default: %(default)r)")
    capfilt.add_argument(
        "--keep", choices=["itm", "threshold", "top"], default="itm",
        help="itm: the ITM head says match (p > 0.5, the paper's rule); threshold: p > --threshold; top: the "
        "--top-k best captions of each image by ITM",
    )  # fmt: skip
    capfilt.add_argument("--threshold", type=float, default=0.5, help="with --keep threshold (default: 0.5)")
    capfilt.add_argument("--top-k", type=positive, default=1, help="with --keep top (default: 1)")
    capfilt.add_argument("--seed", type=int, default=0, help="sampling seed; with the image id it fixes each caption")
    capfilt.add_argument("--report", help="also write a self-contained HTML report here")
    runtime_options(capfilt)
    _job_options(capfilt, required=True)

    serve = commands.add_parser(
        "serve",
        help="serve models over HTTP, with dynamic batching",
        description="Serve models over HTTP (captions, answers, matching, embeddings and OpenAI chat completions), "
        "batching concurrent requests. Prints the address once ready; SIGTERM or Ctrl-C drains (requests in flight "
        "are answered, new ones get 503) and exits 0. Needs the serve extra: pip install 'blipkit[serve]'.",
    )
    serve.add_argument(
        "--model",
        action="append",
        metavar="ID_OR_DIR",
        help="a model to serve, repeatable; its config says which tasks it runs (default: "
        f"{TASKS['image-to-text'].default_model})",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default: %(default)s; 0: a free one)")
    serve.add_argument(
        "--max-batch-size", type=positive, default=8, metavar="N", help="images per model call (default: %(default)s)"
    )
    serve.add_argument(
        "--max-wait-ms",
        type=_non_negative,
        default=10.0,
        metavar="MS",
        help="longest wait for a batch to fill (default: %(default)s)",
    )
    serve.add_argument(
        "--max-queue",
        type=positive,
        default=256,
        metavar="N",
        help="requests waiting before 429 (default: %(default)s)",
    )
    serve.add_argument(
        "--timeout-s",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="answer within this or 504; a request that would wait longer behind queued work gets 429 at once "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--decode-workers", type=positive, default=2, metavar="N", help="image decoding threads (default: %(default)s)"
    )
    serve.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    serve.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights' dtype")
    serve.add_argument("--quantize", default=None, choices=["int8"], help="store linear layers' weights as int8")
    serve.add_argument(
        "--index", action="append", metavar="DIR", help="a `blipkit index` folder to search at /v1/search (repeatable)"
    )
    serve.late_options = _limit_options

    info = commands.add_parser(
        "info",
        help="describe a model, or this machine's speed choices",
        description="Config summary, parameters, files; with --speed, the form each product and attention takes here.",
    )
    info.add_argument("model", metavar="MODEL", nargs="?", help="Hub id or local directory")
    info.add_argument("--speed", action="store_true", help="print this CPU's class and the forms blipkit runs")
    info.add_argument("--json", action="store_true", help="print JSON")

    # Command groups kept beside what they run; each subcommand sets `handler`.
    from blipkit.evaluate.commands import add_commands as add_eval_group
    from blipkit.evaluate.metric_commands import add_eval_commands
    from blipkit.index.commands import add_commands as add_index_commands
    from blipkit.train.commands import add_commands as add_finetune_commands

    add_index_commands(commands)
    add_finetune_commands(commands)
    add_eval_commands(add_eval_group(commands))
    return parser


def _generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beams", type=positive, default=None, help="beam search with N beams (default: greedy)")
    parser.add_argument("--max-new-tokens", type=positive, default=None, help="longest output in tokens")


def _model_options(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("--model", default=TASKS[task].default_model, help="Hub id or directory (default: %(default)s)")
    runtime_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of text")


def _job_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    group = parser.add_argument_group("batch job")
    group.add_argument(
        "--out", required=required, help="output file: .jsonl, .csv, .parquet (embed: .npy, not .csv); rerun to resume"
    )
    group.add_argument(
        "--overwrite", action="store_true", help="remove --out (and its journal and record) and start afresh"
    )
    engine_options(group)


class _Parser(argparse.ArgumentParser):
    """A command's parser whose ``late_options`` are added only when it parses: serve's limits import the image
    stack (torch), which no other command's ``--help`` should wait for."""

    late_options: Callable[[argparse.ArgumentParser], None] | None = None

    def parse_known_args(self, args=None, namespace=None):
        if self.late_options is not None:
            add, self.late_options = self.late_options, None
            add(self)
        return super().parse_known_args(args, namespace)


def _limit_options(parser: argparse.ArgumentParser) -> None:
    from blipkit.serve.limits import Limits

    Limits.add_arguments(parser)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, got {value!r}")
    return port


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return number


def _seconds(value: str) -> float:
    number = _non_negative(value)
    if number == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "match" and not args.out and not args.texts:
        parser.error("match needs at least one TEXT (or --out for a batch job)")
    if args.command == "match" and args.out and len(args.texts) > 1:
        parser.error("with --out, give one TEXT (or --text) to match every image against")
    if args.command == "info" and not args.model and not args.speed:
        parser.error("info needs a MODEL, or --speed")
    # huggingface_hub logs every retry of an unreachable Hub to stderr; a failure here is reported in one line.
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    try:
        if getattr(args, "out", None) and args.command in JOB_COMMANDS:
            return run_job(args)
        if args.command in JOB_ACTIONS:
            _refuse_collections(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        resume = " (rerun the same command to resume)" if getattr(args, "out", None) else ""
        print(f"blipkit: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as error:  # every failure ends in one line that names it, never a traceback
        if os.environ.get("BLIPKIT_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"blipkit: error: {message}", file=sys.stderr)
        return 1


def _refuse_collections(args: argparse.Namespace) -> None:
    """Without --out, a folder, glob, list, table or shard would be read as one image and reported missing."""
    for spec in args.images if args.command == "caption" else [args.image]:
        kind = _collection_kind(spec)
        if kind is not None:
            action = JOB_ACTIONS[args.command]
            raise ValueError(f"{spec} is {kind}: give --out FILE to {action} every image in it as a batch job")


def _collection_kind(spec: str) -> str | None:
    path = Path(spec)
    if path.is_dir():
        return "a folder"
    if path.is_file():
        return COLLECTION_SUFFIXES.get(path.suffix.lower())
    if any(ch in spec for ch in "*?["):  # a pattern the shell left alone (quoted, or matching nothing)
        return "a glob pattern"
    return None


def _generate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.beams:
        kwargs["num_beams"] = args.beams
    if args.max_new_tokens:
        kwargs["max_new_tokens"] = args.max_new_tokens
    return kwargs


def _load(task: str, args: argparse.Namespace):
    from blipkit.pipelines import pipeline

    return pipeline(
        task, model=args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size, quantize=args.quantize
    )


def cmd_caption(args: argparse.Namespace) -> int:
    pipe = _load("image-to-text", args)
    images = args.images
    with _progress(len(images), "captioning") as bar:
        for start in range(0, len(images), pipe.batch_size):
            chunk = images[start : start + pipe.batch_size]
            for image, result in zip(chunk, pipe(chunk, prompt=args.prompt, **_generate_kwargs(args)), strict=True):
                caption = result[0]["generated_text"]
                _emit(args, {"image": image, "caption": caption}, f"{image}\t{caption}" if len(images) > 1 else caption)
            bar.update(len(chunk))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    pipe = _load("visual-question-answering", args)
    answer = pipe(image=args.image, question=args.question, **_generate_kwargs(args))[0]["answer"]
    _emit(args, {"image": args.image, "question": args.question, "answer": answer}, answer)
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    pipe = _load("image-text-matching", args)
    for row in pipe(args.image, args.texts):
        line = f"{row['score']:.4f}\t{row['similarity']:.4f}\t{row['text']}"
        _emit(args, {"image": args.image, "text": row["text"], "itm": row["score"], "itc": row["similarity"]}, line)
    return 0


def run_job(args: argparse.Namespace) -> int:
    """caption / ask / match / embed over a collection, into --out (blipkit.jobs)."""
    from blipkit import jobs

    inputs = args.images if hasattr(args, "images") else [args.image]
    options: dict[str, Any] = {}
    if args.command == "caption":
        options = {"prompt": args.prompt, **_generate_kwargs(args)}
    elif args.command == "ask":
        options = {"question": args.question, **_generate_kwargs(args)}
    elif args.command == "match":
        options = {"text": args.job_text or (args.texts[0] if args.texts else None)}
    summary = jobs.run(
        args.command,
        inputs,
        args.out,
        model=args.model,
        batch_size=args.batch_size,
        dtype=args.dtype,
        quantize=args.quantize,
        device=args.device,
        workers=args.workers,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        ray_gpus_per_actor=args.ray_gpus,
        overwrite=args.overwrite,
        **options,
    )
    return _job_status(summary, args.out)


def cmd_capfilt(args: argparse.Namespace) -> int:
    from blipkit import jobs

    summary = jobs.capfilt(
        args.images, args.out, captioner=args.captioner, filter=args.filter,
        captions_per_image=args.captions_per_image, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        prompt=args.prompt, keep=args.keep, threshold=args.threshold, top_k=args.top_k, seed=args.seed,
        report=args.report, batch_size=args.batch_size, dtype=args.dtype, quantize=args.quantize, device=args.device,
        workers=args.workers, engine=args.engine, ray_address=args.ray_address, ray_actors=args.ray_actors,
        ray_gpus_per_actor=args.ray_gpus, overwrite=args.overwrite,
    )  # fmt: skip
    return _job_status(summary, args.out)


def _job_status(summary, out: str) -> int:
    """Exit code 3 for a job that wrote rows, none of them a result (saying where the reasons are), else 0."""
    if summary.all_failed:
        print(f"blipkit: error: every image failed; the reasons are in the error column of {out}", file=sys.stderr)
        return 3
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from blipkit.info import describe, speed_choices

    if args.speed:
        choices = speed_choices()
        if args.json:
            print(json.dumps(choices, indent=2))
        else:
            width = max(map(len, choices)) + 2
            for what, form in choices.items():
                print(f"{what + ':':<{width}} {form}")
        if not args.model:
            return 0
    summary = describe(args.model)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"model:        {summary['model']}")
    print(f"type:         {summary['model_type']} ({', '.join(summary['architectures']) or 'no architectures listed'})")
    for part, sizes in summary["parts"].items():
        print(f"{part + ':':<13} " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    print(f"parameters:   {summary['parameters']:,}")
    print(f"dtype:        {', '.join(summary['dtypes'])}")
    print("files:")
    for name, size in summary["files"].items():
        print(f"  {name:<40} {_human(size)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from blipkit.serve.limits import Limits
    from blipkit.serve.server import run

    return run(
        args.model or [TASKS["image-to-text"].default_model],
        args.host,
        args.port,
        Limits.from_arguments(args),
        {"device": args.device, "dtype": args.dtype, "quantize": args.quantize},
        indexes=args.index or (),
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        decode_workers=args.decode_workers,
    )


def _run_handler(args: argparse.Namespace) -> int:
    return args.handler(args)


COMMANDS = {
    "caption": cmd_caption, "ask": cmd_ask, "match": cmd_match, "capfilt": cmd_capfilt, "serve": cmd_serve,
    "info": cmd_info, "index": _run_handler, "search": _run_handler, "eval": _run_handler, "finetune": _run_handler,
}  # fmt: skip


def _emit(args: argparse.Namespace, record: dict[str, Any], text: str) -> None:
    print(json.dumps(record, ensure_ascii=False) if args.json else text, flush=True)


def _progress(total: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="img", disable=total < PROGRESS_THRESHOLD, file=sys.stderr)


def _human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def _version() -> str:
    from blipkit import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
