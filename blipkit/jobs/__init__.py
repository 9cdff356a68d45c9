"""Batch jobs over collections of images: caption, ask, match, embed and CapFilt, resumable, on one machine or on Ray.

The Python API behind ``blipkit caption INPUT --out FILE`` and friends::

    from blipkit import jobs
    summary = jobs.caption("photos/", out="captions.jsonl", batch_size=16)
"""

from blipkit.jobs.bootstrapping import run_capfilt as capfilt
from blipkit.jobs.runner import JobSummary, ask, caption, embed, match, run

__all__ = ["JobSummary", "ask", "capfilt", "caption", "embed", "match", "run"]
