"""The scoring device as the service sees it: resolve ``auto``, probe it, describe the GPU."""

from __future__ import annotations

import torch

from jdt_service.schemas import GpuInfo

__all__ = ["gpu_info", "probe_device", "resolve_device"]


def resolve_device(configured: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible and ``cpu`` otherwise; others pass."""
    if configured == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return configured


def probe_device(device: str) -> bool:
    """Whether a one-element computation on ``device`` gives the right answer (blocking)."""
    try:
        x = torch.ones(1, device=device)
        return float((x + x).sum().item()) == 2.0
    except (RuntimeError, AssertionError, ValueError):
        return False


def gpu_info(device: str) -> GpuInfo | None:
    """Name and memory of the CUDA device in use, or ``None`` on the CPU or without CUDA."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    free, total = torch.cuda.mem_get_info(index)
    return GpuInfo(
        name=torch.cuda.get_device_name(index),
        total_memory_bytes=int(total),
        free_memory_bytes=int(free),
    )
