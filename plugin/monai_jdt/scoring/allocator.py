"""glibc's allocator thresholds for a process that scores case after case.

Scoring a label pair allocates buffers of about a MiB each (inflated chunks, chunk codes,
histograms) and frees them at the end of the case. With glibc's defaults a freed block above
the mmap threshold (128 KiB at start, raised only by chance, when a larger block happens to be
freed first) goes back to the kernel, and the next case faults the same pages in again: a
128^3 label pair took 11 to 12 ms per case in a fresh process that scores case after case,
and 5 to 7 ms with the thresholds fixed (``score_directory`` on one thread;
benchmarks/README.md, Allocator). Threads fare worse: each has its own arena.

:func:`tune_allocator` fixes the two thresholds at the values glibc's dynamic ones may reach,
for every thread of the process:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's ceiling for the dynamic value on 64-bit): smaller
  blocks come from the arenas and are reused, larger ones are still mapped on their own and
  returned to the kernel when freed;
* ``M_TRIM_THRESHOLD`` = 64 MiB: an arena keeps up to that much free memory at its top.

So an idle process may keep up to about 64 MiB per scoring thread resident that no case uses
any more (the next case reuses it). ``monai-jdt score-dir``, its local Dask workers, the
service and its job workers call it (one ``score`` is one case: nothing to keep); a script
that calls the Python API case after case may call it once at its start. Nothing is changed
when one of the ``MALLOC_*`` variables that set these is in the environment (the operator's
choice wins), or off glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = [
    "MMAP_THRESHOLD",
    "OPERATOR_VARIABLES",
    "TRIM_THRESHOLD",
    "process_environment",
    "tune_allocator",
]

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
#: environment variables through which glibc reads the same settings at process start
OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")


def _operator_chose() -> bool:
    return any(name in os.environ for name in OPERATOR_VARIABLES)


def tune_allocator() -> bool:
    """Set the two thresholds with ``mallopt`` for the whole process (see the module); whether
    they were set. Safe to call more than once."""
    if _operator_chose():
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def process_environment() -> dict[str, str]:
    """The environment variables that give a new process the same thresholds from its start
    (glibc reads them before the first allocation); empty when the operator set any of
    ``OPERATOR_VARIABLES`` here."""
    if _operator_chose():
        return {}
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    }
