"""Command-line options and argument types shared by every ``blipkit`` command group (jobs, index, serve, eval):
one definition each, so the same flag means and checks the same thing everywhere."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer_from(minimum: int, expected: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``, else an error saying what was ``expected``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
        return number

    return parse


positive = integer_from(1, "a positive integer")
count = integer_from(0, "0 or a positive integer")


def gpus_per_actor(value: str) -> float:
    """An argparse type for ``--ray-gpus``: Ray's rule, checked where the value enters."""
    from blipkit.jobs.ray_engine import check_gpus_per_actor

    try:
        gpus = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs, got {value!r}") from None
    try:
        return check_gpus_per_actor(gpus)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights' dtype")


def runtime_options(parser: argparse.ArgumentParser, batch_size: int = 8) -> None:
    """Where and how a model runs: device, dtype, int8 weights, images per batch."""
    device_options(parser)
    parser.add_argument("--quantize", default=None, choices=["int8"], help="store linear layers' weights as int8")
    parser.add_argument(
        "--batch-size", type=positive, default=batch_size, help="images per batch (default: %(default)s)"
    )


def engine_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Where a job's batches run: decoding threads here, the model here or on Ray actors."""
    parser.add_argument("--workers", type=positive, default=2, help="decoding threads (default: %(default)s)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="where the model runs")
    parser.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    parser.add_argument("--ray-actors", type=positive, default=1, help="model replicas on Ray (default: 1)")
    parser.add_argument("--ray-gpus", type=gpus_per_actor, default=0.0, help="GPUs per Ray actor (default: 0)")
