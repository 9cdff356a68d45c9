"""What an index holds and which model made it: ``DIR/index.json``, written when the index is created and checked
on every add, so that vectors of two models never share an index (their spaces cannot be compared)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "index.json"
KINDS = ("images", "texts")


class IndexRefused(ValueError):
    """An index that cannot be opened or added to as asked: the message names it and what to do."""


@dataclass(frozen=True)
class Manifest:
    kind: str  # "images" or "texts"
    model: str  # Hub id, or the model directory's absolute path
    model_type: str  # "blip" or "blip-2"
    dim: int  # the ITC embedding's size
    queries: int  # vectors per image: 1 (BLIP) or the Q-Former's query count (BLIP-2)
    written_by: str = ""

    @property
    def columns(self) -> tuple[str, ...]:
        """The metadata columns of a row besides its id and vector."""
        return ("path", "hash", "caption") if self.kind == "images" else ("text", "hash", "source")


def model_name(model: str | os.PathLike) -> str:
    """How an index records a model: a directory by its absolute path (the same from any folder), else the Hub id."""
    return os.path.abspath(model) if os.path.isdir(model) else str(model)


def describe_model(model: str | os.PathLike, kind: str) -> Manifest:
    """The manifest of a new ``kind`` index of ``model``, from the checkpoint's config."""
    from blipkit import __version__
    from blipkit.auto import AutoConfig
    from blipkit.tasks import checkpoint_model_type

    if kind not in KINDS:
        raise IndexRefused(f"an index holds images or texts, got {kind!r}")
    model_type = checkpoint_model_type(model)
    config = AutoConfig.from_pretrained(model)
    queries = config.num_query_tokens if model_type == "blip-2" else 1
    dim = config.image_text_hidden_size
    return Manifest(kind, model_name(model), model_type, dim, queries, f"blipkit {__version__}")


def read(directory: Path) -> Manifest:
    path = directory / FILE
    if not path.exists():
        hint = "" if directory.exists() else " (no such folder)"
        raise IndexRefused(f"no index at {directory}{hint}: build one with `blipkit index build INPUTS --index DIR`")
    try:
        return Manifest(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as error:
        raise IndexRefused(f"{path} is not an index manifest ({error}); rebuild the index") from None


def write(directory: Path, manifest: Manifest) -> None:
    """Atomically, so a kill never leaves half of one."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / (FILE + ".tmp")
    temporary.write_text(json.dumps(asdict(manifest), indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, directory / FILE)


def check_same_model(directory: Path, manifest: Manifest, model: str | os.PathLike | None, kind: str) -> None:
    """Refuse to add with another model, or to add images to a text index (and texts to an image index)."""
    if model is not None and model_name(model) != manifest.model:
        raise IndexRefused(
            f"{directory} was built with {manifest.model}; adding with {model_name(model)} is refused: embeddings "
            f"of two models cannot be compared. Add with --model {manifest.model}, or build another index"
        )
    if kind != manifest.kind:
        raise IndexRefused(f"{directory} is an index of {manifest.kind}; it cannot take {kind}: build another index")
