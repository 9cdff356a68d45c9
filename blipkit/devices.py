"""Which torch devices this machine has, and a check that names them when a requested one is unknown or absent."""

from __future__ import annotations

import torch

DEVICE_FORMS = "cpu, cuda, cuda:N, mps or xpu"


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), or a ValueError naming it and the devices there are.

    Called where a model is loaded and before a job opens its output, so a typo or a missing GPU fails at once,
    not at the first tensor moved, and leaves no empty output file behind.
    """
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}: use {DEVICE_FORMS} (this machine has {', '.join(available_devices())})"
        ) from None
    if not _is_available(resolved):
        raise ValueError(f"device {str(device)!r} is not available: this machine has {', '.join(available_devices())}")
    return resolved


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
