"""METEOR 1.5 through its Java jar, driven as pycocoevalcap drives it (``-stdio -l en -norm``), where Java exists."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

JAR_NAME = "meteor-1.5.jar"
JAR_VARIABLE = "BLIPKIT_METEOR_JAR"  # a jar of one's own; it needs its data/ folder (paraphrase-en.gz) beside it


class MeteorUnavailable(RuntimeError):
    """No ``java`` on PATH, or no METEOR jar: the message says which, and how to get it."""


def find_meteor() -> tuple[str, Path]:
    """``(java, jar)``: ``java`` from PATH; the jar from $BLIPKIT_METEOR_JAR, else the one pycocoevalcap ships."""
    java = shutil.which("java")
    if java is None:
        raise MeteorUnavailable("METEOR needs Java (e.g. apt-get install default-jre-headless); none on PATH")
    if os.environ.get(JAR_VARIABLE):
        jar = Path(os.environ[JAR_VARIABLE])
        if not jar.is_file():
            raise MeteorUnavailable(f"${JAR_VARIABLE} is {jar}, which is not a file")
        return java, jar
    spec = importlib.util.find_spec("pycocoevalcap")  # locates the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(folder) / "meteor" / JAR_NAME
        if jar.is_file():
            return java, jar
    raise MeteorUnavailable(f"METEOR needs {JAR_NAME}: pip install pycocoevalcap, or set ${JAR_VARIABLE}")


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR of tokenized captions (space-joined tokens): per image a ``SCORE`` line gives the jar's
    statistics, and one ``EVAL`` line over all of them gives the score, as pycocoevalcap's ``Meteor`` asks."""
    java, jar = find_meteor()
    # -Xmx2G as pycocoevalcap runs it; the jar finds its paraphrase table relative to the working directory.
    command = [java, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: a chatty JVM can never block on it
        process = subprocess.Popen(
            command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        try:
            return _evaluate(process, errors, candidates, references)
        finally:
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _evaluate(
    process: subprocess.Popen, errors: IO[str], candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> float:
    def ask(line: str, answers: int = 1) -> list[str]:
        process.stdin.write(line.replace("\n", " ") + "\n")
        process.stdin.flush()
        replies = [process.stdout.readline() for _ in range(answers)]
        if not all(replies):
            errors.seek(0)
            message = errors.read().strip().splitlines()
            raise RuntimeError(f"the METEOR jar stopped: {message[-1] if message else 'no message'}")
        return [reply.strip() for reply in replies]

    statistics = []
    for candidate, refs in zip(candidates, references, strict=True):
        # "|||" separates fields in the jar's protocol; pycocoevalcap removes it from the candidate.
        candidate = candidate.replace("|||", "").replace("  ", " ")
        statistics += ask(" ||| ".join(["SCORE", *refs, candidate]))
    # The EVAL line answers one score per image, then the corpus score.
    return float(ask(" ||| ".join(["EVAL", *statistics]), answers=len(statistics) + 1)[-1])
