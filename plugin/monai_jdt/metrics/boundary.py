"""Boundary metrics (HD95, HD, ASSD, MASD, NSD, Boundary IoU) for MONAI validation: a
``CumulativeIterationMetric`` and its ignite handler, so that a bundle's evaluator reports HD95
next to mIoU::

    key_val_metric:
      val_hd95:
        _target_: monai_jdt.metrics.BoundaryHandler
        metric: hd95
        spacing: [0.8, 0.8, 1.5]
        output_transform: "$monai.handlers.from_engine(['pred', 'label'])"

Each (image, class) is scored by ``monai_jdt.scoring.boundary`` on the binarized channel
(``> 0.5``) of a one-hot ``[B, C, *spatial]`` batch: numpy on the CPU, torch on the tensors'
device for CUDA tensors. Unlike MONAI's ``HausdorffDistanceMetric``, a class present in only
one of the two masks is not NaN (which a mean would drop, hiding the failure): its distance is
charged ``missing_distance`` mm (default: the image diagonal) and its NSD / Boundary IoU is 0.
A class absent from both is NaN and skipped by the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from monai_jdt.metrics._checks import buffer_tensor, check_tensors, first_class
from monai_jdt.scoring.boundary import (
    BOUNDARY_METRICS,
    DISTANCE_METRICS,
    BoundaryOptions,
    boundary_scores,
    volume_diagonal_mm,
)

__all__ = ["BoundaryHandler", "BoundaryMetric"]


class BoundaryMetric(CumulativeIterationMetric):
    """One boundary metric per (image, class), accumulated over batches.

    Args:
        metric: one of ``hd``, ``hd95``, ``assd``, ``masd``, ``nsd``, ``boundary_iou``.
        include_background: keep channel 0.
        spacing: mm per voxel along the spatial axes (None: 1 mm).
        percentile, percentile_mode, nsd_tolerance, boundary_width, surface: the conventions of
            ``monai_jdt.scoring.boundary.BoundaryOptions`` (``nsd_tolerance`` one number).
        missing_distance: mm charged to a class present in only one mask (None: the image
            diagonal).

    Raises:
        InvalidOptionError: a bad metric name or convention.
    """

    def __init__(
        self,
        metric: str = "hd95",
        include_background: bool = False,
        spacing: Sequence[float] | None = None,
        percentile: float = 95.0,
        percentile_mode: str = "directed",
        nsd_tolerance: float = 1.0,
        boundary_width: float | None = None,
        surface: str = "voxel",
        missing_distance: float | None = None,
    ) -> None:
        super().__init__()
        self.options = BoundaryOptions(
            metrics=(metric,),
            percentile=percentile,
            percentile_mode=percentile_mode,  # type: ignore[arg-type]
            nsd_tolerance=nsd_tolerance,
            boundary_width=boundary_width,
            surface=surface,  # type: ignore[arg-type]
        )
        self.metric = metric
        self.include_background = include_background
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.missing_distance = missing_distance

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """``[B, C]`` scores of one one-hot batch ``[B, C, *spatial]`` (NaN: absent from both)."""
        y_pred, y = check_tensors(y_pred, y)
        if y_pred.shape != y.shape or y_pred.ndim < 3:
            raise ValueError(
                "y_pred and y must be one-hot [B, C, *spatial] of the same shape, got "
                f"{tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        first = first_class(y_pred.shape[1], self.include_background)
        spatial = tuple(y_pred.shape[2:])
        penalty = (
            volume_diagonal_mm(spatial, self.spacing)
            if self.missing_distance is None
            else float(self.missing_distance)
        )
        out = torch.full((y_pred.shape[0], y_pred.shape[1] - first), float("nan"))
        for b in range(y_pred.shape[0]):
            for c in range(first, y_pred.shape[1]):
                score = self._score(y_pred[b, c] > 0.5, y[b, c] > 0.5)
                value = score.values[self.metric]
                if value is None and score.missing in ("prediction empty", "reference empty"):
                    value = penalty if self.metric in DISTANCE_METRICS else 0.0
                out[b, c - first] = float("nan") if value is None else value
        return out

    def _score(self, pred: torch.Tensor, ref: torch.Tensor) -> Any:
        if pred.device.type == "cuda":
            from monai_jdt.scoring.boundary_torch import boundary_scores_torch

            p, r = pred.to(torch.uint8), ref.to(torch.uint8)
            return boundary_scores_torch(p, r, [1], self.options, spacing=self.spacing)[0]
        p_np = pred.detach().cpu().numpy().astype(np.uint8)
        r_np = ref.detach().cpu().numpy().astype(np.uint8)
        return boundary_scores(p_np, r_np, [1], self.options, spacing=self.spacing)[0]

    def per_image_scores(self) -> torch.Tensor:
        """``[N, C]`` scores of every (image, class) seen; NaN where absent from both."""
        return buffer_tensor(self)

    def aggregate(self) -> torch.Tensor:
        """The mean over the (image, class) pairs that are not NaN (0-dim tensor; NaN if none)."""
        scores = self.per_image_scores()
        kept = scores[~torch.isnan(scores)]
        return kept.mean() if kept.numel() else torch.tensor(float("nan"))


def _identity(x: Any) -> Any:
    return x


class BoundaryHandler(IgniteMetricHandler):
    """``BoundaryMetric`` as an ignite metric of MONAI engines (as ``MeanDice`` for Dice).

    Args:
        metric, include_background, spacing, percentile, percentile_mode, nsd_tolerance,
            boundary_width, surface, missing_distance: as ``BoundaryMetric``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        save_details: store the ``[N, C]`` scores in ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        metric: str = "hd95",
        include_background: bool = False,
        spacing: Sequence[float] | None = None,
        percentile: float = 95.0,
        percentile_mode: str = "directed",
        nsd_tolerance: float = 1.0,
        boundary_width: float | None = None,
        surface: str = "voxel",
        missing_distance: float | None = None,
        output_transform: Callable = _identity,
        save_details: bool = True,
    ) -> None:
        if metric not in BOUNDARY_METRICS:
            raise ValueError(
                f"metric must be one of {', '.join(BOUNDARY_METRICS)}, got {metric!r}."
            )
        super().__init__(
            metric_fn=BoundaryMetric(
                metric,
                include_background,
                spacing,
                percentile,
                percentile_mode,
                nsd_tolerance,
                boundary_width,
                surface,
                missing_distance,
            ),
            output_transform=output_transform,
            save_details=save_details,
        )
