"""Process-wide CPU runtime settings, applied only by :func:`tune_process` (the CLIs call it at start).

A library imported into someone else's process (a robot stack, a ROS node) must not change the environment or the
allocator, so ``import diffpolicy`` applies none of this. What :func:`tune_process` sets, each unless the user
already chose otherwise:

- ``MKL_CBWR=AUTO``: Intel MKL (torch's CPU BLAS) runs the small matrix products of batch-1 inference, the U-Net's
  convolutions at horizon 16, 1.7-1.8x faster in its conditional-numerical-reproducibility mode on a 2-core AMD EPYC,
  and large products no slower. MKL reads the mode once, at its first call: call this before any tensor work.
  Inherited by child processes (e.g. DataLoader workers), which is what the CLIs want.
- glibc's allocator keeps freed memory (mmap threshold at its 32 MiB ceiling, trim threshold 1 GiB): a training step
  allocates and frees the same large buffers every step; by default glibc returns them to the kernel and the next
  step pays page faults to get them back. Float32 training step of the (256,512,1024) U-Net alternating with the
  reference's: 1.17x the reference's speed with glibc's defaults, 1.55-1.59x with these settings. The process keeps
  up to 1 GiB of freed heap.

Measurements: ``benchmarks/results/core.md`` (``benchmarks/bench_core.py``).
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


def tune_process() -> dict[str, bool]:
    """Apply the settings above to this process; returns which ones took: ``{"mkl_cbwr": ..., "allocator": ...}``."""
    return {"mkl_cbwr": set_mkl_mode(), "allocator": keep_freed_memory()}


def set_mkl_mode() -> bool:
    """``MKL_CBWR=AUTO`` unless set (whether it was set here); must run before MKL's first call."""
    if "MKL_CBWR" in os.environ:
        return False
    os.environ["MKL_CBWR"] = "AUTO"
    return True


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
