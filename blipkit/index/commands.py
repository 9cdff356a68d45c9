"""``blipkit index build|add|remove|info|dedup|build-texts`` and ``blipkit search``: argparse wiring and handlers.

``add_commands(subparsers)`` adds both commands to the ``blipkit`` parser; each parser's ``handler`` runs it and
returns the exit code (0 done, 3 an add in which every image failed, as for batch jobs).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from blipkit.arguments import count, device_options, engine_options, positive, runtime_options
from blipkit.tasks import MATCHING_MODEL


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index`` (a group of subcommands) and ``search`` to the ``blipkit`` command's subparsers."""
    index = subparsers.add_parser(
        "index",
        help="build and keep a searchable index of images (or texts)",
        description="A persistent index of ITC embeddings (LanceDB; pip install 'blipkit[index]').",
    )
    actions = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    for name, what in (("build", "create an index (or resume building one)"), ("add", "add images to an index")):
        parser = actions.add_parser(name, help=what, description=f"{what[0].upper()}{what[1:]}: embeds every image "
                                    "it does not have yet (by id, and by content: a renamed file is not embedded "
                                    "again). Inputs: anything a batch job reads.")  # fmt: skip
        parser.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, globs, lists, tables, shards")
        _index_option(parser)
        _embedding_options(parser, f"the index's, else {MATCHING_MODEL}" if name == "build" else "the index's")
        parser.set_defaults(handler=cmd_add)

    texts = actions.add_parser(
        "build-texts",
        help="create or extend an index of texts",
        description="Embed texts (a .txt, one a line; or a table's caption/text column).",
    )
    texts.add_argument("inputs", nargs="+", metavar="TEXTS", help=".txt, .csv or .parquet")
    _index_option(texts)
    default = f"the index's, else {MATCHING_MODEL}"
    texts.add_argument("--model", default=None, help=f"Hub id or directory (default: {default})")
    texts.add_argument("--batch-size", type=positive, default=64, help="texts per batch (default: %(default)s)")
    device_options(texts)
    texts.set_defaults(handler=cmd_build_texts)

    remove = actions.add_parser("remove", help="remove rows by id", description="Remove rows by id, at once.")
    remove.add_argument("ids", nargs="+", metavar="ID")
    _index_option(remove)
    remove.set_defaults(handler=cmd_remove)

    info = actions.add_parser("info", help="model, count, dimensions, size on disk")
    info.add_argument("index", metavar="DIR")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=cmd_info)

    dedup = actions.add_parser("dedup", help="list groups of near-duplicates",
                               description="Groups of rows whose similarity is at least --threshold.")  # fmt: skip
    _index_option(dedup)
    dedup.add_argument("--threshold", type=float, default=0.95, help="similarity (default: %(default)s)")
    dedup.add_argument("--json", action="store_true", help="print one JSON array per group")
    device_options(dedup)
    dedup.set_defaults(handler=cmd_dedup)

    search = subparsers.add_parser(
        "search",
        help="search an index by text or by image",
        description="Text -> images, image -> images, or image -> texts over a text index. --rerank K re-scores the "
        "best K by ITM and ranks them by BLIP's ITM match logit + ITC.",
    )
    search.add_argument("text", nargs="?", metavar="TEXT", help="what to look for")
    search.add_argument("--image", help="an image to look for instead of a text")
    _index_option(search)
    search.add_argument("--top-k", type=positive, default=10, help="results (default: %(default)s)")
    search.add_argument("--rerank", type=count, default=0, metavar="K", help="re-rank the best K by ITM")
    search.add_argument("--where", metavar="EXPR", help="SQL filter over the rows: \"path LIKE '%%/2023/%%'\"")
    search.add_argument("--json", action="store_true", help="print a JSON array, best first")
    device_options(search)
    search.set_defaults(handler=cmd_search)


def _index_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--index", required=True, metavar="DIR", help="the index folder")


def _embedding_options(parser: argparse.ArgumentParser, model_default: str) -> None:
    parser.add_argument("--model", default=None, help=f"Hub id or directory (default: {model_default})")
    runtime_options(parser)
    engine_options(parser)


def cmd_add(args: argparse.Namespace) -> int:
    from blipkit.index.index import FAILURES, Index

    if args.index_command == "build":
        index = Index.create(args.index, args.model, "images", args.device, args.dtype)
    else:
        index = Index.open(args.index, args.device, args.dtype)
    summary = index.add(
        args.inputs, model=args.model, batch_size=args.batch_size, workers=args.workers, engine=args.engine,
        ray_address=args.ray_address, ray_actors=args.ray_actors, ray_gpus_per_actor=args.ray_gpus,
        quantize=args.quantize, progress=True,
    )  # fmt: skip
    for failure in summary.failures:
        print(f"failed: {failure['id']}: {failure['error']}", file=sys.stderr)
    print(f"index {args.index_command}: {summary}", file=sys.stderr)
    if summary.failed and not summary.embedded and not summary.skipped and not summary.duplicates:
        reasons = index.directory / FAILURES
        print(f"blipkit: error: every image failed; the reasons are in {reasons}", file=sys.stderr)
        return 3
    return 0


def cmd_build_texts(args: argparse.Namespace) -> int:
    from blipkit.index.index import Index

    index = Index.create(args.index, args.model, "texts", args.device, args.dtype)
    summary = index.add_texts(args.inputs, batch_size=args.batch_size, model=args.model)
    print(f"index build-texts: {summary}", file=sys.stderr)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from blipkit.index.index import Index

    missing = Index.open(args.index).remove(args.ids)
    print(f"removed {len(args.ids) - len(missing)}", file=sys.stderr)
    for row_id in missing:
        print(f"not in the index: {row_id}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from blipkit.index.index import Index

    info = Index.open(args.index).info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for name, value in info.items():
            print(f"{name + ':':<17} {value}")
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from blipkit.index.index import Index

    index = Index.open(args.index, args.device, args.dtype)
    label = "path" if index.manifest.kind == "images" else "text"
    for group in index.dedup(args.threshold):
        print(json.dumps(group, ensure_ascii=False) if args.json else "\t".join(row[label] for row in group))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.image is None):
        raise ValueError("search needs a TEXT or --image (one of them)")
    from blipkit.index.index import Index

    index = Index.open(args.index, args.device, args.dtype)
    hits = index.search(text=args.text, image=args.image, k=args.top_k, rerank=args.rerank, where=args.where)
    if args.json:
        print(json.dumps(hits, ensure_ascii=False))
        return 0
    label = "path" if index.manifest.kind == "images" else "text"
    for hit in hits:
        print(_line(hit, label))
    return 0


def _line(hit: dict[str, Any], label: str) -> str:
    itm = "" if hit["itm"] is None else f"\titm {hit['itm']:.4f}"
    return f"{hit['score']:.4f}\titc {hit['itc']:.4f}{itm}\t{hit[label]}"
