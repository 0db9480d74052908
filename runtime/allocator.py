"""Keep the memory that large tensors free inside the process, for the next episode to reuse.

glibc's malloc serves every request above its mmap threshold (which adapts, but to 32 MiB at
most) with fresh pages from the kernel, and gives them back on free. A Conv4 activation of one
20-way Omniglot task is 64 MiB (320 images x 64 channels x 28 x 28 floats; a 5-way episode of
84-pixel photographs has larger ones), so on a CPU every forward pass of such a task had the
kernel map and zero new pages: a 20-way HyperMAML training run spent 38% of its time in the
kernel. Serving everything from the heap and not trimming it keeps freed memory for the next
task: 1.4-2.5x the training tasks per second on 20-way Omniglot, with the same peak memory
(docs/performance.md, ``bench/throughput.py --allocator glibc,keep``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt() parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest value mallopt()'s int argument takes: free memory at the heap's top is given back
# to the kernel only beyond 2 GiB.
KEEP_UP_TO = 2**31 - 1
OPT_OUT = "FSL_MALLOC"  # FSL_MALLOC=glibc keeps glibc's own settings (bench/throughput.py)
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (no mmap, no trimming below 2 GiB), unless
    ``FSL_MALLOC=glibc`` is set, the user set malloc through its own environment variables, or
    the C library is not glibc. Returns whether the settings were applied."""
    if (os.environ.get(OPT_OUT) == "glibc" or any(name in os.environ for name in USER_SETTINGS)
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    no_mmap = libc.mallopt(M_MMAP_MAX, 0)
    return bool(no_mmap and libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
