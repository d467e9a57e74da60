"""Keep freed memory inside the process while training on a CPU under glibc (Linux).

A training step allocates the same large tensors every time: the pre-activations (batch x d_sae) and the
gradients of W_enc and W_dec (d_in x d_sae each). glibc serves every block over its mmap threshold (at most
32 MB) with a fresh mmap and unmaps it when freed, so each step touches its largest tensors' pages for the
first time again, and on a virtual machine a page fault is dear (docs/train.md has the measurement).
Asking malloc to take large blocks from its heap and never to trim it lets a step reuse the pages of the
last one. This is what jemalloc or tcmalloc under LD_PRELOAD achieve, without a library to install.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_NEVER_TRIM = 2 ** 31 - 1  # mallopt takes an int: trim only a free top above 2 GiB


def keep_freed_memory() -> bool:
    """Set glibc's malloc to reuse freed large blocks (no mmap for them, no trimming) for the rest of the
    process -> whether it applied (False off Linux, or on a C library without mallopt)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter already links
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
