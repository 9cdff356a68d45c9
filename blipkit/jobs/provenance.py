"""Which job wrote an output: a sidecar ``OUT.meta.json``, written when the output is created and checked on
every resume, so that a rerun with another task, question, text, model or generation settings never takes the
output's rows for its own and skips them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from blipkit.jobs.sinks import START_AFRESH, OutputError, output_files


def claim(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` this job's: start afresh (``overwrite``: the output, its journal and sidecar are removed),
    record the settings of a new output, or let a resume go on only if the same settings wrote the old one."""
    if overwrite:
        for file in [*output_files(out), sidecar_path(out)]:
            file.unlink(missing_ok=True)
    # An empty file holds no rows that could be mistaken for this job's.
    existing = next((file for file in output_files(out) if file.exists() and file.stat().st_size), None)
    if existing is None:
        _record(out, settings)
    else:
        _check(out, settings, existing)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def _record(out: Path, settings: dict[str, Any]) -> None:
    """Write the sidecar for a new output; atomically, so a kill never leaves half of one."""
    from blipkit import __version__

    sidecar = sidecar_path(out)
    temporary = sidecar.with_name(sidecar.name + ".tmp")
    document = {"written_by": f"blipkit {__version__}", "settings": _as_json(settings)}
    temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, sidecar)


def _check(out: Path, settings: dict[str, Any], existing: Path) -> None:
    """Refuse to resume into ``out`` (whose rows are in ``existing``) unless this job's settings wrote it."""
    sidecar = sidecar_path(out)
    if not sidecar.exists():
        raise OutputError(
            f"{existing} exists, but no {sidecar.name} beside it says which job wrote it (an older blipkit or "
            f"another tool), so its rows cannot be resumed; {START_AFRESH}"
        )
    recorded = _read(sidecar)
    current = _as_json(settings)
    names = [*current, *(name for name in recorded if name not in current)]
    differences = [
        f"{name}: {_show(recorded.get(name))} in the output, {_show(current.get(name))} now"
        for name in names
        if recorded.get(name) != current.get(name)
    ]
    if differences:
        raise OutputError(f"{out} holds another job's results ({'; '.join(differences)}); {START_AFRESH}")


def _read(sidecar: Path) -> dict[str, Any]:
    try:
        settings = json.loads(sidecar.read_text(encoding="utf-8"))["settings"]
    except (ValueError, KeyError, TypeError):
        settings = None
    if not isinstance(settings, dict):
        raise OutputError(f"{sidecar} is not a job's record (JSON with a 'settings' object); {START_AFRESH}")
    return settings


def _as_json(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as they read back from the sidecar (tuples become lists, objects their repr)."""
    return json.loads(json.dumps(settings, default=repr))


def _show(value: Any) -> str:
    return "unset" if value is None else repr(value)
