"""One job per output at a time: an exclusive lock on ``OUT.lock``, held for the whole job.

Two jobs appending to the same output would each skip only what was written before they started and write the
rest twice. The lock covers everything beside the output too (journal, index, sidecar), and the kernel lets it go
when a job dies, so a killed job never leaves its output locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from blipkit.jobs.sinks import OutputError


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the ``with`` block, or fail at once if another job holds it."""
    lock = out.with_name(out.name + ".lock")
    descriptor = _acquire(lock, out)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # before letting go, so no job can lock the file being removed
        os.close(descriptor)


def _acquire(lock: Path, out: Path) -> int:
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputError(
                f"{out} is in use by another job (it holds {lock}): wait for it to finish, or choose another output"
            ) from None
        # The job before may have removed the file between our open and our lock: a lock on a removed file keeps
        # nobody out, so lock the file that is there now.
        if _same_file(descriptor, lock):
            return descriptor
        os.close(descriptor)


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)
