"""glibc's allocator thresholds for the scoring threads, fixed at start-up.

The service scores on threads (:mod:`jdt_service.scoring_pool`). glibc gives each thread its own
arena, and there a freed buffer of a few MiB (a chunk of inflated voxels, a histogram) goes
back to the kernel, so the next case faults the same pages in again: on a 128^3 label pair
that made the scoring ~40 % slower on a scoring thread than in a script's main thread, where
glibc's *dynamic* thresholds keep such buffers. :func:`tune_allocator` fixes the two
thresholds at the values the dynamic ones reach there, for every thread:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's ceiling for the dynamic value on 64-bit): smaller
  blocks come from the arenas and are reused, larger ones are still mapped on their own and
  returned to the kernel when freed;
* ``M_TRIM_THRESHOLD`` = 64 MiB: an arena keeps up to that much free memory at its top.

So an idle service may keep up to about 64 MiB per scoring thread resident that a job no longer
uses (the next job reuses it). Nothing is changed when one of the ``MALLOC_*`` variables that
set these is in the environment (the operator's choice wins), or off glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["MMAP_THRESHOLD", "OPERATOR_VARIABLES", "TRIM_THRESHOLD", "tune_allocator"]

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
#: environment variables through which glibc reads the same settings at process start
OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def tune_allocator() -> bool:
    """Set the two thresholds with ``mallopt``; whether they were set (see the module)."""
    if any(name in os.environ for name in OPERATOR_VARIABLES):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
