"""Which torch devices this machine has, and a check that names them when a requested one is unknown or absent."""

from __future__ import annotations

from typing import Any

import torch

DEVICE_FORMS = "cpu, cuda, cuda:N, mps or xpu"
# The reference's device_map strategies that spread a model over several devices.
SPLITTING_MAPS = ("balanced", "balanced_low_0", "sequential")


def check_device(device: str | torch.device | int | None) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), or a ValueError naming it and the devices there are.

    An int follows the reference's pipelines: -1 is the cpu, N is cuda:N. Called where a model is loaded and before a
    job opens its output, so a typo or a missing GPU fails at once, not at the first tensor moved, and leaves no empty
    output file behind.
    """
    if device is None:
        return None
    try:
        resolved = torch.device(_int_device(device) if _is_index(device) else device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}: use {DEVICE_FORMS} (this machine has {', '.join(available_devices())})"
        ) from None
    if not _is_available(resolved):
        shown = f"{device} ({resolved})" if _is_index(device) else repr(str(device))
        raise ValueError(f"device {shown} is not available: this machine has {', '.join(available_devices())}")
    return resolved


def device_from_map(device_map: str | torch.device | int | dict[str, Any]) -> torch.device:
    """The one device a reference-style ``device_map`` names: "auto" (the best device here, see ``best_device``), a
    device (string, ``torch.device`` or int) or ``{"": device}``. blipkit places a whole model on one device, so a
    map that splits it ("balanced", "sequential", per-module entries) is refused, saying what is supported.
    """
    if isinstance(device_map, dict):
        if list(device_map) != [""]:
            raise ValueError(_unsupported_map(device_map))
        device_map = device_map[""]
    if device_map == "auto":
        return best_device()
    if device_map in SPLITTING_MAPS:
        raise ValueError(_unsupported_map(device_map))
    return check_device(device_map)


def best_device() -> torch.device:
    """The first accelerator here (cuda:0, else mps, else xpu:0), else the cpu: what ``device_map="auto"`` picks."""
    accelerators = available_devices()[1:]
    return torch.device(accelerators[0] if accelerators else "cpu")


def available_devices() -> list[str]:
    """The devices a model can be placed on here, e.g. ['cpu'] or ['cpu', 'cuda:0', 'cuda:1']."""
    found = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        backend = getattr(torch, kind, None)
        if backend is not None and backend.is_available():
            found += [f"{kind}:{index}" for index in range(backend.device_count())]
    return found


def _is_available(device: torch.device) -> bool:
    # torch.cpu, torch.cuda, torch.mps and torch.xpu share is_available() and device_count(); a device type
    # without such a module (meta, hpu, ...) is one blipkit does not load models onto.
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return False
    return device.index is None or device.index < backend.device_count()


def _is_index(device: object) -> bool:
    return isinstance(device, int) and not isinstance(device, bool)  # True is an int, but no device index


def _int_device(index: int) -> str:
    # -1 and N as the reference's pipeline(device=...) reads them; torch.device(N) needs an accelerator to exist.
    return "cpu" if index == -1 else f"cuda:{index}"


def _unsupported_map(device_map: Any) -> str:
    return (
        f"device_map {device_map!r} is not supported: blipkit places a whole model on one device. Use "
        f"device_map='auto' (the best device here), a device ('cuda:0', 0, 'mps', 'cpu') or {{'': device}}"
    )
