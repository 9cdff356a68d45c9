"""``blipkit eval``: a group of benchmark commands (``retrieval``; more join it with their own subparsers)."""

from __future__ import annotations

import argparse
import json

from blipkit.arguments import device_options, positive
from blipkit.tasks import MATCHING_MODEL


def add_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``eval`` to the ``blipkit`` command's subparsers; returns its own subparsers, for other benchmarks."""
    group = subparsers.add_parser("eval", help="evaluate a model on a benchmark", description="Benchmarks.")
    benchmarks = group.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    retrieval = benchmarks.add_parser(
        "retrieval",
        help="image-text retrieval recall (COCO, Flickr30k)",
        description="R@1/5/10 text->image and image->text on a Karpathy-split test file, as BLIP evaluates: ITC "
        "top --k-test candidates, re-ranked by ITM match logit + ITC.",
    )
    retrieval.add_argument("--annotations", required=True, help="e.g. coco_karpathy_test.json")
    retrieval.add_argument("--images", required=True, metavar="DIR", help="the folder the file's image paths start in")
    retrieval.add_argument("--k-test", type=positive, default=256, help="candidates re-ranked per query (default: 256)")
    retrieval.add_argument("--model", default=MATCHING_MODEL, help="Hub id or directory (default: %(default)s)")
    retrieval.add_argument("--batch-size", type=positive, default=16, help="images per batch (default: %(default)s)")
    device_options(retrieval)
    retrieval.add_argument("--json", action="store_true", help="print JSON")
    retrieval.set_defaults(handler=cmd_retrieval)
    return benchmarks


def cmd_retrieval(args: argparse.Namespace) -> int:
    from blipkit.evaluate.retrieval import evaluate

    result = evaluate(
        args.annotations, args.images, args.model, k_test=args.k_test, batch_size=args.batch_size,
        device=args.device, dtype=args.dtype, progress=True,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print("TR@1 {txt_r1:.1f}  TR@5 {txt_r5:.1f}  TR@10 {txt_r10:.1f}".format(**result))
        print("IR@1 {img_r1:.1f}  IR@5 {img_r5:.1f}  IR@10 {img_r10:.1f}".format(**result))
    return 0
