"""``BatchFeature``: what processors, image processors and tokenizers return - a dict of inputs with ``.to``."""

from __future__ import annotations

from typing import Any

import torch

from blipkit.devices import check_device


class BatchFeature(dict):
    """A dict (``model(**inputs)``, ``inputs["pixel_values"]``, ``inputs.pixel_values``) whose ``.to`` moves its
    tensors as the reference's ``BatchFeature.to`` does: ``.to(device)``, ``.to(device, dtype)``, ``.to(dtype)`` or
    ``.to(device=..., dtype=...)`` - the dtype applies to floating tensors only (pixel values), so token ids and
    attention masks stay integers.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}: it holds {', '.join(self)}") from None

    def to(
        self,
        *device_or_dtype: str | torch.device | int | torch.dtype,
        device: str | torch.device | int | None = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
    ) -> BatchFeature:
        """Move (and cast) the tensors in place and return this same object, as the reference does."""
        device, dtype = _device_and_dtype(device_or_dtype, device, dtype)
        target = check_device(device)
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                cast = dtype if value.is_floating_point() else None
                self[key] = value.to(device=target, dtype=cast, non_blocking=non_blocking)
        return self


def _device_and_dtype(
    positional: tuple[Any, ...], device: Any, dtype: torch.dtype | None
) -> tuple[Any, torch.dtype | None]:
    """The device and dtype of a ``.to`` call, whichever way (positional, keyword, in either order) they came."""
    for value in positional:
        if isinstance(value, torch.dtype) and dtype is None:
            dtype = value
        elif isinstance(value, (str, torch.device, int)) and not isinstance(value, bool) and device is None:
            device = value
        else:
            raise ValueError(f"BatchFeature.to takes a device and a dtype, at most one of each; got {value!r}")
    return device, dtype
