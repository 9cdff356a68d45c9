"""``blipkit eval caption`` and ``blipkit eval vqa``: the metric commands, added to the ``eval`` group's subparsers.

Each prints one JSON object on stdout; failed prediction rows and a missing METEOR are reported on stderr.
``python -m blipkit.evaluate.metric_commands caption|vqa ...`` runs them on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from blipkit.arguments import positive


def add_eval_commands(eval_subparsers: argparse._SubParsersAction) -> None:
    """Add ``caption`` and ``vqa`` to the ``eval`` group (each sets ``handler``, which returns the exit code)."""
    caption = eval_subparsers.add_parser(
        "caption",
        help="COCO caption metrics of a caption job's output (BLEU, METEOR, ROUGE-L, CIDEr)",
        description="BLEU-1..4, METEOR (where Java exists), ROUGE-L and CIDEr(-D) of captions against references, "
        "after the COCO PTB tokenization, as pycocoevalcap computes them. Prints one JSON object.",
    )
    caption.add_argument(
        "--predictions",
        metavar="P",
        help="the caption job's output (.jsonl, .csv, .parquet: rows with id and caption) or a COCO results .json; "
        "with --predict, where the captions are written",
    )
    caption.add_argument(
        "--predict",
        nargs="+",
        metavar="IMAGES",
        help="caption these images first (any caption-job input: folders, tables, shards) with --model",
    )
    caption.add_argument("--model", help="with --predict: the captioning model, Hub id or directory")
    caption.add_argument("--prompt", help="with --predict: the captioning prompt, scored without it")
    caption.add_argument("--batch-size", type=positive, default=8, help="with --predict: images per batch")
    caption.add_argument(
        "--references",
        required=True,
        metavar="R",
        help="a .jsonl of rows with id and captions (a list), or a COCO captions annotation file (.json)",
    )
    caption.add_argument(
        "--strip-prompt",
        metavar="TEXT",
        help='remove TEXT from the start of every caption that begins with it, e.g. "a picture of" (BLIP scores '
        "what follows its prompt)",
    )
    caption.add_argument("--no-meteor", action="store_true", help="skip METEOR (its jar takes ~15 s to start)")
    caption.set_defaults(handler=cmd_eval_caption)

    vqa = eval_subparsers.add_parser(
        "vqa",
        help="VQAv2 accuracy of an ask job's output",
        description="VQA accuracy - min(#humans who gave the answer / 3, 1), averaged over the ten leave-one-out "
        "subsets - after the official answer normalization. Prints one JSON object, in percent.",
    )
    vqa.add_argument(
        "--predictions",
        metavar="P",
        help="the ask job's output (.jsonl, .csv, .parquet: rows with id and answer) or a VQA results .json; "
        "with --predict, where the answers are written",
    )
    vqa.add_argument(
        "--predict",
        nargs="+",
        metavar="DATA",
        help="answer these first with --model: tables (or shards) whose rows carry an image and a question column",
    )
    vqa.add_argument("--model", help="with --predict: the VQA model, Hub id or directory")
    vqa.add_argument("--batch-size", type=positive, default=8, help="with --predict: images per batch")
    vqa.add_argument(
        "--references",
        required=True,
        metavar="R",
        help="a .jsonl of rows with id and answers (the 10 human answers), or the official annotation file (.json)",
    )
    vqa.add_argument(
        "--questions",
        metavar="Q",
        help="the official questions file: pairs rows that name an image (its id's number) and a question column",
    )
    vqa.set_defaults(handler=cmd_eval_vqa)


def cmd_eval_caption(args: argparse.Namespace) -> int:
    from blipkit.evaluate.captions import evaluate_captions

    use_meteor = False if args.no_meteor else None
    if not args.predict:
        _require_predictions(args.predictions)
        scores = evaluate_captions(args.predictions, args.references, use_meteor=use_meteor,
                                   strip_prompt=args.strip_prompt)  # fmt: skip
        print(json.dumps(scores))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        predictions = args.predictions or str(Path(scratch) / "captions.jsonl")
        from blipkit import jobs

        jobs.caption(args.predict, predictions, model=args.model, prompt=args.prompt, batch_size=args.batch_size,
                     progress=False)  # fmt: skip
        strip = args.strip_prompt or args.prompt
        scores = evaluate_captions(predictions, args.references, use_meteor=use_meteor, strip_prompt=strip)
    print(json.dumps(scores))
    return 0


def cmd_eval_vqa(args: argparse.Namespace) -> int:
    from blipkit.evaluate.vqa import evaluate_vqa

    if not args.predict:
        _require_predictions(args.predictions)
        print(json.dumps(evaluate_vqa(args.predictions, args.references, args.questions)))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        predictions = args.predictions or str(Path(scratch) / "answers.jsonl")
        from blipkit import jobs

        jobs.ask(args.predict, predictions, model=args.model, batch_size=args.batch_size, progress=False)
        print(json.dumps(evaluate_vqa(predictions, args.references, args.questions)))
    return 0


def _require_predictions(predictions: str | None) -> None:
    if not predictions:
        raise ValueError("give --predictions P (a job's output), or --predict DATA to run the model on it first")


def main(argv: Sequence[str] | None = None) -> int:
    """These commands on their own, failing as ``blipkit`` fails: one line on stderr, exit code 1."""
    parser = argparse.ArgumentParser(prog="blipkit eval", description="Caption and VQA metrics.")
    add_eval_commands(parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK"))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Exception as error:  # one line that names the failure, never a traceback (as blipkit.cli does)
        if os.environ.get("BLIPKIT_DEBUG"):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"blipkit: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
