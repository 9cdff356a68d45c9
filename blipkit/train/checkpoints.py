"""A run's checkpoints: ``DIR/checkpoint-STEP/`` holds the model in the Hugging Face layout (config, safetensors,
processor files: transformers and blipkit load it) and ``trainer_state.pt``, everything ``--resume`` needs to go on
exactly as if never stopped (the objective's parameters and buffers, optimizer, schedule, position, random states).
A checkpoint is written to a temporary folder and renamed when complete, so a kill never leaves a half one behind.
"""

from __future__ import annotations

import copy
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def save_model(model: torch.nn.Module, processor: Any, directory: Path) -> None:
    """The model as the reference lays it out; LoRA adapters are folded into a copy's weights first."""
    if any("lora" in name for name, _ in model.named_parameters()):
        from blipkit.train.lora import merge_lora

        model = copy.deepcopy(model)
        merge_lora(model)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def save_checkpoint(out: Path, step: int, model, processor, state: dict[str, Any]) -> Path:
    final = out / f"checkpoint-{step}"
    partial = out / f".checkpoint-{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save_model(model, processor, partial)
    torch.save({**state, "random": random_states()}, partial / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return final


def last_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``out``, if any."""
    found = [(int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := CHECKPOINT.search(p.name))]
    found = [(step, path) for step, path in found if (path / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    restore_random_states(state["random"])
    return state


def random_states() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_random_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
