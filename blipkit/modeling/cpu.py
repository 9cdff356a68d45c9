"""Which class of CPU this is, as far as blipkit's speed choices go: the one place they read it from.

Three classes compute differently enough to change which form of a product or an attention is fastest:

- ``avx2``: no bf16 matrix instructions (AVX2 machines, and any CPU without AVX512-BF16 or AMX): bf16 arithmetic
  is several times slower than float32, so many-row bf16 products are computed in float32;
- ``avx512_bf16``: native bf16 dot products (AVX512-BF16, e.g. AMD Zen 4, Intel Cooper Lake);
- ``amx``: Intel AMX tiles (Sapphire Rapids on), native bf16 at a higher rate still.

``BLIPKIT_CPU_CLASS`` (set before blipkit is imported) makes blipkit take another class's paths, so that every
path's correctness can be tested, and its speed compared, on any machine; what a class's paths would be refined by
measuring this machine (``linear.upcast_min_rows``) is then not measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

CLASSES = ("avx2", "avx512_bf16", "amx")
ENVIRONMENT_VARIABLE = "BLIPKIT_CPU_CLASS"


def detect() -> str:
    """This CPU's class, from what PyTorch's CPU probes report."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return "avx2"


def cpu_class() -> str:
    """The class blipkit's choices follow: ``BLIPKIT_CPU_CLASS`` when set, else the detected one."""
    forced = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not forced:
        return detect()
    if forced not in CLASSES:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={forced!r} is not a CPU class; use one of {', '.join(CLASSES)}")
    return forced


def is_forced() -> bool:
    """Whether ``BLIPKIT_CPU_CLASS`` chose the class (then measurements that refine a class's choices are skipped)."""
    return bool(os.environ.get(ENVIRONMENT_VARIABLE, "").strip())


def has_native_bf16(cpu: str) -> bool:
    return cpu != "avx2"


def best_time(run: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls of ``run``, after one untimed call (a kernel's first call may build it):
    what the measurements that refine a class's choices compare."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
