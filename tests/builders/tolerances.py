"""How close blipkit's float32 outputs must be to the reference's."""

from __future__ import annotations

import torch


def close(actual, expected, atol=1e-5, rtol=1e-4):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
