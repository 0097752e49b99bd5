"""How training's memory comes and goes: glibc's malloc told to keep the blocks it frees.

Each training step allocates the same activations and gradients (megabytes each) and frees
them again. By default glibc hands a large freed block back to the system, and the next step
gets fresh pages, which the kernel must fault in and zero: 600-2,400 page faults a step of the
reference network, and 5-12% of its speed, on a 2-core AMD EPYC with AVX-512 BF16 (measured
side by side in fresh processes; docs/performance.md). `mnist-digits train` (and
benchmarks/speed.py, which times its step) asks malloc to keep them instead. The memory a run
peaks at is the same; only what is handed back between steps changes.

Left alone where the user tunes malloc already (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_
or GLIBC_TUNABLES in the environment), and off glibc (macOS, Windows, musl), where there is
no mallopt. The Python API calls nothing here: this changes the whole process.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap, which keeps them when freed, rather than from pages
# of their own (32 MiB: glibc's largest on 64-bit; a batch of 64 needs 5.5 MiB at most, a batch
# of 1,000 for validation more, which keeps its own pages as before).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 512 << 20  # bytes of free heap kept before any is handed back to the system
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Ask glibc's malloc to keep freed blocks for the next step; True when it was asked and agreed."""
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or any(name in env for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already uses
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
