"""Process-wide CPU settings that ``import diffpolicy`` applies, each unless the user chose otherwise.

- ``MKL_CBWR=AUTO``: Intel MKL (torch's CPU BLAS) runs the small matrix products of batch-1 inference, the U-Net's
  convolutions at horizon 16, 1.7-1.8x faster in its conditional-numerical-reproducibility mode on this project's AMD
  EPYC, and large products no slower (``benchmarks/results/core.md``, session 8). MKL reads the mode once, at its
  first call, hence at import.
- glibc's allocator keeps freed memory: a training step allocates and frees the same large buffers every step;
  by default glibc returns them to the kernel and the next step pays page faults to get them back. Float32 training
  step of the (256,512,1024) U-Net alternating with the reference's (``benchmarks/bench_core.py``): p50 2.33 s with
  glibc's defaults, 1.66-1.73 s with these settings, the reference 2.72 vs 2.63-2.69 s (``benchmarks/results/core.md``,
  session 10, run X against runs U-W).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, malloc.h
# Blocks below this come from the heap and are reused: glibc's ceiling for the setting (32 MiB on 64-bit), which its
# default only reaches after freeing such a block.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap kept for reuse instead of being returned (glibc's default: 128 KiB, adapting).
TRIM_THRESHOLD = 1 << 30
# Set any of these and glibc keeps its own settings (the last one only opts out, e.g. for an A/B of the above).
ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "DIFFPOLICY_DEFAULT_ALLOCATOR")


def set_mkl_mode() -> None:
    """``MKL_CBWR=AUTO`` unless set; must run before MKL's first call."""
    os.environ.setdefault("MKL_CBWR", "AUTO")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (above); whether they were set. Skipped outside glibc Linux and when the
    user configured the allocator (:data:`ALLOCATOR_ENV`, ``glibc.malloc`` tunables)."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ALLOCATOR_ENV) \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    # the trim threshold alone would be worse than glibc's defaults: setting it freezes the mmap threshold at 128 KiB
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
