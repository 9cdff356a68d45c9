"""Pre-fill a Hugging Face hub cache with a local model directory, in the layout huggingface_hub writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def prefill(hub_cache: Path, repo_id: str, source: Path, revision: str = "main") -> Path:
    """Copy ``source``'s files into ``hub_cache`` as blobs + snapshot symlinks; return the snapshot folder."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot
