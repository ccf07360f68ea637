"""The memory this process may use: the physical memory, or less under a cgroup limit.

A container's memory limit (``docker run --memory``, compose's ``deploy.resources.limits``,
Kubernetes' ``resources.limits.memory``, systemd's ``MemoryMax=``) is a cgroup limit below
the host's memory: past it the kernel kills the process, however much the host has, while
``sysconf`` still reports the host's memory. :func:`memory_limit` is the smallest of the
physical memory and the limits of the process's memory cgroup and of each cgroup above it
(each bounds it), read from cgroup v2 (``memory.max``) or v1 (``memory.limit_in_bytes``).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

__all__ = ["CGROUP_ROOT", "memory_limit"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_limit(proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = CGROUP_ROOT) -> int:
    """Bytes this process may use: ``min(physical memory, cgroup limits)``.

    ``proc_cgroup`` is the process's cgroup list (``/proc/self/cgroup``: ``hierarchy:
    controllers:path`` lines), ``root`` where the cgroup file systems are mounted. A limit
    that cannot be read, is not a decimal number, or is unlimited (``max``), does not count.
    """
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min([physical, *_cgroup_limits(proc_cgroup, root)])


def _cgroup_limits(proc_cgroup: Path, root: Path) -> list[int]:
    try:
        lines = proc_cgroup.read_text("ascii", errors="replace").splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:  # v2, the unified hierarchy
            limits += _limits_up(root, path, "memory.max")
        elif "memory" in controllers.split(","):  # v1, the memory controller's hierarchy
            limits += _limits_up(root / "memory", path, "memory.limit_in_bytes")
    return limits


def _limits_up(base: Path, path: str, name: str) -> list[int]:
    """The limits in file ``name`` of the cgroup at ``path`` under ``base`` and of each of its
    ancestors that can be read (in a container the process's own path may not exist: its
    cgroup is mounted at ``base`` itself)."""
    parts = PurePosixPath(path).parts[1:]
    limits = []
    for depth in range(len(parts), -1, -1):
        try:
            text = base.joinpath(*parts[:depth], name).read_text("ascii", errors="replace")
        except OSError:
            continue
        text = text.strip()
        if text.isdecimal():
            limits.append(int(text))
    return limits
