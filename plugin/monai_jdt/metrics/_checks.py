"""Checks shared by the metrics of ``monai_jdt.metrics``: the ``(y_pred, y)`` pair, the first
class kept, and the cumulative buffer to aggregate."""

from __future__ import annotations

import warnings

import torch
from monai.metrics import CumulativeIterationMetric


def check_tensors(y_pred: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y_pred, y)`` as given.

    Raises:
        TypeError: either is not a tensor.
    """
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(
            f"y_pred and y must be tensors, got {type(y_pred).__name__} and {type(y).__name__}."
        )
    return y_pred, y


def first_class(channels: int, include_background: bool) -> int:
    """The first channel scored: 1 drops the background, 0 keeps it (always for a single
    channel, with MONAI's warning when ``include_background=False`` is then ignored)."""
    if include_background:
        return 0
    if channels == 1:
        # stacklevel 3: the caller of the metric's _compute_tensor
        warnings.warn(
            "single channel prediction, `include_background=False` ignored.", stacklevel=3
        )
        return 0
    return 1


def buffer_tensor(metric: CumulativeIterationMetric) -> torch.Tensor:
    """The metric's cumulative buffer, all-gathered across ranks (MONAI's ``get_buffer``).

    Raises:
        ValueError: no batch was seen since ``reset()``.
    """
    data = metric.get_buffer()
    if not isinstance(data, torch.Tensor):
        raise ValueError(
            f"{type(metric).__name__} has no data to aggregate: call it on at least one batch "
            "(y_pred, y) after reset()."
        )
    return data
