"""Find a model's files: in a local directory, or in a Hub repository through huggingface_hub's cache."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any


class ModelNotFoundError(OSError):
    """The model (or one of its required files) cannot be found locally or on the Hub."""


class ModelFiles:
    """Where one model's files come from: a local directory, or a Hub repository with the settings to reach it.

    Opened once and handed to the config, the weight reader and the processors, so each file is looked up once however
    many of them read it. ``ModelFiles.open(name_or_path, revision=..., cache_dir=..., local_files_only=...,
    token=...)``; ``get(filename)`` is the file's local path, ``weights()`` the weight files.
    """

    def __init__(self, name: str | os.PathLike, settings: dict[str, Any]) -> None:
        self.name = name
        self.settings = settings  # huggingface_hub's: revision, cache_dir, local_files_only, token
        self._found: dict[str, Path | None] = {}

    @classmethod
    def open(
        cls,
        name_or_path: str | os.PathLike | ModelFiles,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> ModelFiles:
        """The files of ``name_or_path``. A ``ModelFiles`` given instead is returned as it is; settings given beside it
        must agree with its own, since they could not apply to the files it has already found."""
        settings = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        if not isinstance(name_or_path, ModelFiles):
            return cls(name_or_path, settings)
        clashing = {k: v for k, v in settings.items() if v not in (None, False) and v != name_or_path.settings[k]}
        if clashing:
            raise ValueError(f"{clashing} differ from what {name_or_path!r} was opened with: give them to its open")
        return name_or_path

    def get(self, filename: str, required: bool = True) -> Path | None:
        """The local path of ``filename`` (downloaded if need be); None for a missing file unless ``required``."""
        path = self._found.get(filename)
        # A file found missing when it was optional is looked up again when required, for the error that says why.
        if filename not in self._found or (path is None and required):
            path = self._found[filename] = resolve_file(self.name, filename, required=required, **self.settings)
        return path

    def weights(self) -> list[Path]:
        """The weight files: safetensors before .bin, one file or the shards its index names."""
        from blipkit.checkpoint_files import weight_files  # it imports this module

        return weight_files(self)

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.settings.items() if v not in (None, False) and k != "token")
        return f"ModelFiles({str(self.name)!r}{', ' if given else ''}{given})"


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    required: bool = True,
) -> Path | None:
    """Return the local path of ``filename`` in a model directory or Hub repo.

    A Hub download goes through ``huggingface_hub.hf_hub_download``, so HF_HOME, HF_HUB_CACHE,
    HF_HUB_OFFLINE and HF_TOKEN work as they do everywhere else. With ``required=False`` a file the
    repository does not have gives None.
    """
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        candidate = local / filename
        if candidate.is_file():
            return candidate
        if required:
            raise ModelNotFoundError(f"{local} has no {filename}")
        return None
    if local.exists():
        raise ModelNotFoundError(f"{local} is a file; expected a model directory or a Hub repository id")
    repo_id = str(name_or_path)
    if _looks_like_a_path(repo_id):  # a mistyped directory, not a Hub id: asking the Hub would only confuse
        raise ModelNotFoundError(f"no model directory at {repo_id}{_did_you_mean(local)}")

    import huggingface_hub
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
            )
        )
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError: caught first) not cached, and offline
        if not required and _repo_is_cached(repo_id, revision, cache_dir):
            return None
        raise ModelNotFoundError(_not_cached_message(repo_id, filename)) from None
    except EntryNotFoundError:
        if required:
            raise ModelNotFoundError(f"{repo_id} has no {filename}") from None
        return None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{repo_id} is neither a local directory nor a Hub repository you can access"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id} has no revision {revision!r}") from None


def _looks_like_a_path(name: str) -> bool:
    """Whether ``name`` (not an existing path) reads as a local path rather than a Hub id ("org/model")."""
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        return True
    return "/" in name and Path(name).parent.is_dir()


def _did_you_mean(path: Path) -> str:
    """' (did you mean models/caption?)' where the missing directory's folder has one of a close name."""
    if not path.parent.is_dir():
        return ""
    siblings = [p.name for p in path.parent.iterdir() if p.is_dir()]
    close = difflib.get_close_matches(path.name, siblings, n=1)
    return f" (did you mean {path.parent / close[0]}?)" if close else ""


def read_json(path: Path, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A JSON object from a file, or ``error`` naming the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _repo_is_cached(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> bool:
    """Whether a snapshot of the repo is in the cache (so a missing optional file really is absent)."""
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    ref = root / "refs" / (revision or "main")
    return ref.is_file() or (root / "snapshots" / (revision or "")).is_dir()


def _not_cached_message(repo_id: str, filename: str) -> str:
    from huggingface_hub import constants

    offline = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
    return (
        f"{repo_id}/{filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {offline}. "
        f"Connect to the internet once (or run `hf download {repo_id}`), or pass a local directory."
    )
